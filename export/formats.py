"""What `zoo export` can write, declared once and torch-free so the CLI can offer the choices.

Quantized variants of classifier.onnx, and the runtimes a TorchServe archive can hold.
"""
from __future__ import annotations

from enum import Enum

QUANTIZE_VARIANTS = ("int8", "fp16")  # classifier.<variant>.onnx, each gated on val accuracy
NO_QUANTIZATION = "none"


class Runtime(str, Enum):
    """What runs inside a .mar: the ONNX graph on ONNX Runtime, or a torch.export program on PyTorch."""

    onnx = "onnx"
    torch = "torch"
