"""What `zoo export` can write, declared once and torch-free so the CLI can offer the choices.

Quantized variants of the graphs, which one is deployed, and the runtimes a TorchServe archive can hold.
"""
from __future__ import annotations

from enum import Enum

QUANTIZE_VARIANTS = ("int8", "fp16")  # classifier.<variant>.onnx and features.<variant>.onnx, each gated
NO_QUANTIZATION = "none"
AUTO_DEPLOY = "auto"  # --deploy: the fastest variant that passed its gate where the model runs (export/deploy.py)
DEPLOY_CHOICES = (AUTO_DEPLOY, "fp32", *QUANTIZE_VARIANTS)


class Runtime(str, Enum):
    """What runs inside a .mar: the ONNX graph on ONNX Runtime, or a torch.export program on PyTorch."""

    onnx = "onnx"
    torch = "torch"
