"""torch's trace of a run's model into the combined ONNX graph (logits, probabilities, features), through
the export cache (graph_cache.py): onnx_export cuts the classifier and feature graphs from it."""
from __future__ import annotations

import warnings

import onnx
import torch
from torch import nn

from zoo.backbones import ZooModel
from zoo.export import graph_cache

# Batch 2 and H != W: torch.export specialises sizes of 1, and a square example made it fail on
# convnext_tiny ("Invalid ranges").
EXAMPLE_SHAPE = (2, 3, 64, 96)


class _Exportable(nn.Module):
    """The run's model with the three outputs both graphs are cut from."""

    def __init__(self, model: ZooModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(image)
        logits = self.model.forward_head(features)
        return logits, torch.softmax(logits, dim=1), features


def _trace(model: ZooModel, opset: int) -> onnx.ModelProto:
    """torch's trace, not optimized yet: every initializer is one of the model's tensors (graph_cache.py)."""
    batch = torch.export.Dim("batch")
    height, width = torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
    example = torch.zeros(EXAMPLE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Exportable(model).eval(), (example,), None, dynamo=True, opset_version=opset, verbose=False,
            input_names=["image"], output_names=["logits", "probabilities", "features"],
            dynamic_shapes={"image": {0: batch, 2: height, 3: width}}, optimize=False)
    assert program is not None  # dynamo=True always returns the program
    return program.model_proto


def combined_graph(model: ZooModel, opset: int) -> tuple[onnx.ModelProto, str]:
    """The optimized graph with all three outputs, from the export cache when the architecture was traced before."""
    return graph_cache.graph_for(_Exportable(model).eval(), opset, lambda: _trace(model, opset))
