"""What `zoo export` can write, declared once and torch-free so the CLI can offer the choices.

Quantized variants of the graphs, which one is deployed, and the runtimes a TorchServe archive can hold.
"""
from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

from zoo.errors import UsageError

QUANTIZE_VARIANTS = ("int8", "fp16")  # classifier.<variant>.onnx and features.<variant>.onnx, each gated
NO_QUANTIZATION = "none"
AUTO_DEPLOY = "auto"  # --deploy: the fastest variant that passed its gate where the model runs (export/deploy.py)
DEPLOY_CHOICES = (AUTO_DEPLOY, "fp32", *QUANTIZE_VARIANTS)
# A served model's name, fullmatched: what TorchServe accepts, and safe in a KServe URL path.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
FEATURES_SUFFIX = "-features"  # NAME serves the classifier, NAME-features the bottleneck-feature extractor


class Runtime(str, Enum):
    """What runs inside a .mar: the ONNX graph on ONNX Runtime, or a torch.export program on PyTorch."""

    onnx = "onnx"
    torch = "torch"


def check_archive_name(name: str) -> str:
    """The whole name must fit (fullmatch: a trailing newline does not); `zoo export` checks it before exporting."""
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{name!r} cannot name a TorchServe model: use letters, digits, '-', '_' and '.', "
                         "starting with a letter.")
    return name


def default_archive_name(run_dir: Path) -> str:
    """A valid served model name from the run directory's name."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(run_dir).resolve().name).strip("-.") or "model"
    return name if name[0].isalpha() else f"m{name}"
