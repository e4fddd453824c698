"""Traced export graphs kept per architecture, so that an export skips torch's trace after the first.

torch.onnx.export(dynamo=True) spends most of an export tracing the model: about four fifths of an
efficientnet_lite0 export on two CPU cores (benchmarks/export_cache.py). The traced graph depends on
the architecture, not on the values of the weights: before torch's optimizer runs, every initializer
of the graph is one of the model's parameters or buffers, under its own name. So the unoptimized
graph is kept in zoo's cache folder without the weights (0.3 MB for lite0, 0.9 for resnet18), keyed by everything the
graph depends on: the architecture with the names, shapes and dtypes of its tensors, the opset,
zoo's model and export code, and the torch, torchvision, onnx and onnxscript versions. An export of
any run of that architecture fills in its own weights and runs the same optimizer a fresh trace runs.

The number of classes is left out of the key as well: the run's new classifier is one Gemm on the
pooled features, so a graph traced for 3 classes serves a run with 10 once the classifier's tensors
and the shapes computed from them are set to the run's (`filled`).

A reused graph is trusted no further than a fresh trace: before it is returned, ONNX Runtime runs it
against PyTorch on one random batch (SELF_CHECK_TOLERANCE), and anything that does not load, fit or
agree is traced again and replaces the entry. The export's own parity check follows as ever.
ZOO_EXPORT_GRAPH_CACHE=0 turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from zoo.atomic import atomic_write_bytes
from zoo.log import get_logger

log = get_logger(__name__)

ENV = "ZOO_EXPORT_GRAPH_CACHE"
VERSION = 1  # bump when what a graph is made from changes outside the files hashed below
TRACED, REUSED = "traced", "reused from the export cache"
SELF_CHECK_TOLERANCE = 1e-3  # max |difference| relative to max(1, max |output|): a stale graph is far off
# The run's new classifier under trace._Exportable's names: its first dimension is the number of classes.
CLASSIFIER = "model.classifier."
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def folder() -> Path:
    """Beside the feature cache (ZOO_CACHE_DIR, else ~/.cache/zoo)."""
    from zoo.training.feature_cache import default_cache_dir

    return default_cache_dir().parent / "export-graphs"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def _code_digest() -> str:
    """The source of the model definitions and of the export itself: an edited file is a different graph."""
    import zoo.backbones

    files = sorted(Path(zoo.backbones.__file__).parent.glob("*.py"))
    files += [Path(__file__).parent / "trace.py", Path(__file__)]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def key(module: nn.Module, opset: int) -> str:
    """Everything the traced graph depends on; not the values of the weights."""
    import onnxscript
    import torchvision

    tensors = [[name, str(t.dtype), ["classes", *t.shape[1:]] if name.startswith(CLASSIFIER) else list(t.shape)]
               for name, t in module.state_dict().items()]
    parts = {"version": VERSION, "opset": opset, "architecture": _architecture(module), "tensors": tensors,
             "code": _code_digest(), "torch": torch.__version__, "torchvision": torchvision.__version__,
             "onnx": onnx.__version__, "onnxscript": getattr(onnxscript, "__version__", "")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def _architecture(module: nn.Module) -> str:
    """repr(module), with the classifier's number of classes left out."""
    text = repr(module)
    try:
        head = module.get_submodule(CLASSIFIER.rstrip("."))
    except AttributeError:
        return text
    if isinstance(head, nn.Linear):
        text = text.replace(repr(head), f"Linear(in_features={head.in_features}, out_features=classes, "
                                        f"bias={head.bias is not None})")
    return text


def graph_for(module: nn.Module, opset: int, trace: Callable[[], onnx.ModelProto]) -> tuple[onnx.ModelProto, str]:
    """The optimized graph of `module` (eval mode), and whether it was traced or reused.

    `trace()` returns torch's unoptimized graph of `module`, whose initializers are its state_dict's
    tensors under their names."""
    state = {name: t.detach().cpu() for name, t in module.state_dict().items()}
    if not enabled():
        return optimized(trace()), TRACED
    path = folder() / f"{key(module, opset)}.onnx"
    if path.is_file():
        try:
            graph = optimized(filled(onnx.load_from_string(path.read_bytes()), state))
            self_check(graph, module)
            log.info(f"Reusing the graph traced for this architecture before ({path.name} in {path.parent})")
            return graph, REUSED
        except Exception as e:  # noqa: BLE001 - a damaged, stale or foreign entry: trace again and replace it
            log.warning(f"The cached graph {path} cannot be reused ({type(e).__name__}: {e}): tracing again")
    graph = trace()
    _keep(stripped(graph, state), path)
    return optimized(graph), TRACED


def stripped(graph: onnx.ModelProto, state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """A copy without the model's tensors (their names, shapes and types stay): what the cache holds."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for init in out.graph.initializer:
        if init.name in state:
            for field in _DATA_FIELDS:
                init.ClearField(field)
    return out


def filled(graph: onnx.ModelProto, state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """The graph with `state`'s tensors in place, sized to the model's classes; a tensor the graph wants
    and the model lacks, or of another shape (but for the number of classes), is an error."""
    classes = None
    for init in graph.graph.initializer:
        t = state.get(init.name)
        if t is None:
            if not (init.HasField("raw_data") or any(len(getattr(init, f)) for f in _DATA_FIELDS[1:])):
                raise KeyError(f"the model has no tensor {init.name!r}")
            continue
        same = list(init.dims) == list(t.shape)
        if not same and init.name.startswith(CLASSIFIER) and list(init.dims[1:]) == list(t.shape[1:]):
            classes = (int(init.dims[0]), int(t.shape[0]))
        elif not same:
            raise ValueError(f"{init.name} is {list(t.shape)} in the model and {list(init.dims)} in the graph")
        init.CopyFrom(numpy_helper.from_array(t.numpy(), init.name))
    if classes is not None:
        _resize_classes(graph, *classes)
    return graph


def _resize_classes(graph: onnx.ModelProto, traced: int, wanted: int) -> None:
    """Set the declared shapes of the classifier's tensors and of every value computed from them (logits,
    probabilities) from `traced` classes to `wanted`; nothing upstream of the classifier changes."""
    g = graph.graph
    inits = {i.name: i for i in g.initializer if i.name.startswith(CLASSIFIER)}
    downstream = set(inits)
    for node in g.node:  # in topological order
        if any(name in downstream for name in node.input):
            downstream.update(node.output)
    for info in [*g.value_info, *g.output]:
        if info.name not in downstream:
            continue
        dims = info.type.tensor_type.shape.dim
        if info.name in inits:
            for d, size in zip(dims, inits[info.name].dims, strict=True):
                d.dim_value = size
            continue
        for d in dims:
            if d.HasField("dim_value") and d.dim_value == traced:
                d.dim_value = wanted


def optimized(graph: onnx.ModelProto) -> onnx.ModelProto:
    """torch's own optimizer (what torch.onnx.export(optimize=True) runs), on a fresh or a filled graph."""
    import onnx_ir as ir

    program = torch.onnx.ONNXProgram(ir.serde.deserialize_model(graph), None)
    program.optimize()
    return program.model_proto


def self_check(graph: onnx.ModelProto, module: nn.Module) -> None:
    """ONNX Runtime against PyTorch on one random batch; raises when any output is off."""
    from zoo.inference import CPU, open_session

    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module(x)
    want = [w.numpy() for w in (want if isinstance(want, tuple | list) else (want,))]
    got = open_session(graph.SerializeToString(), [CPU]).run(None, {graph.graph.input[0].name: x.numpy()})
    for w, g in zip(want, got, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"ONNX Runtime answers in shape {list(g.shape)} where PyTorch gives {list(w.shape)}")
        error = float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max()))
        if error > SELF_CHECK_TOLERANCE:
            raise ValueError(f"ONNX Runtime differs from PyTorch by {error:.1e} on a random batch")


def _keep(graph: onnx.ModelProto, path: Path) -> None:
    """Store the weightless graph; a cache that cannot be written costs time, never the export."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, graph.SerializeToString())
    except Exception as e:  # noqa: BLE001
        log.warning(f"Could not keep the traced graph in {path.parent} ({type(e).__name__}: {e})")
