"""`--device` for what runs on ONNX Runtime (`zoo predict`, `zoo evaluate` of an export): its providers.

Torch-free, like zoo.edge: the edge install has no PyTorch. zoo.hardware.resolve_device is the
PyTorch side of the same flag. `auto` takes the best installed accelerator and falls back to the
CPU on its own; an explicit `cuda` that cannot run is one sentence instead of a silent fallback,
because a user who names the GPU wants to know when it is not used.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zoo.errors import UsageError
from zoo.inference import CPU, CUDA, available_providers

if TYPE_CHECKING:
    import onnxruntime as ort

ORT_DEVICES = "auto, cpu, cuda or cuda:N"


def ort_placement(device: str = "auto") -> tuple[list[str] | None, int | None]:
    """(providers, CUDA device id) for a --device value: None providers mean zoo.inference's own choice."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return None, None
    if name == "cpu":
        return [CPU], None
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise UsageError(f"Unknown device {device!r} for ONNX Runtime: choose {ORT_DEVICES}.")
    if CUDA not in available_providers():
        raise UsageError(f"--device {device} needs onnxruntime-gpu, and this onnxruntime has no CUDA provider: "
                         "pip install onnxruntime-gpu (Linux x86_64), or use --device auto or cpu.")
    return [CUDA], int(match.group(1) or 0)


def check_local(device: str) -> None:
    """A server chooses its own devices: --device other than auto with a server is one sentence."""
    if (device or "auto").strip().lower() != "auto":
        raise UsageError("--device chooses where a model runs on this machine; a server runs on its own devices: "
                         "drop --device.")


def check_placement(session: ort.InferenceSession, device: str, providers: Sequence[str] | None) -> None:
    """One sentence when `providers` (ort_placement's, for `device`) asked for CUDA and the session took another
    provider: ORT falls back silently."""
    if providers is not None and list(providers) == [CUDA] and session.get_providers()[0] != CUDA:
        raise UsageError(f"--device {device}: ONNX Runtime could not run on that CUDA GPU here (no such GPU, no "
                         "driver, or missing CUDA libraries): use --device auto or cpu.")
