"""Where training and extraction run, and in which precision: `--device` and `--precision`, resolved once.

`auto` takes the GPU when PyTorch sees one (CUDA, else Apple's MPS) and the CPU otherwise. Precision
`auto` is bf16 autocast on a GPU that supports it, fp16 with a gradient scaler on one that does not,
bf16 autocast on a CPU with bfloat16 instructions, and fp32 on other CPUs and MPS. Several processes
under torchrun keep the GPU of their local rank, whatever `--device` says.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(requested: str = "auto") -> torch.device:
    """The device a flag names, checked against what this machine has; one sentence when it lacks it."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise UsageError("--device mps needs Apple's Metal backend, which PyTorch does not see here: use --device "
                             "auto or cpu.")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise UsageError(f"Unknown device {requested!r}: choose {DEVICE_CHOICES}.")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested} needs a CUDA GPU, and PyTorch sees none here (no GPU, no driver, or a "
                         "CPU-only build of torch): use --device auto or cpu.")
    index = int(match.group(1) or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered "
                         f"from 0: choose one of them.")
    return torch.device("cuda", index)


def resolve_precision(requested: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 for this device."""
    name = (requested or "auto").strip().lower()
    if name not in PRECISIONS:
        raise UsageError(f"Unknown precision {requested!r}: choose one of {', '.join(PRECISIONS)}.")
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16 needs a GPU with bfloat16 support (Ampere or newer): use fp16 or auto.")
        return name
    if name == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU: on the CPU use bf16 or fp32 (auto).")
    if name == "auto":
        # bf16 autocast on a CPU with bfloat16 instructions: benchmarks/training_speed.py measured the
        # full training step at 1.7x fp32 on one (AMD EPYC, AVX512-BF16). Without them bf16 is emulated,
        # so fp32 stays; MPS stays in fp32 too.
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo (Linux);
    torch has no public query for it, and elsewhere the answer is taken to be no."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", text) is not None


# cuDNN builds kernel plans for every new input shape, NHWC ones slowly, so on a GPU the best layout for a
# pass depends on how many of its batches share a shape. Per layout: (ms for the first batch of a new
# shape, ms for each further batch of it), efficientnet_lite0's forward on batches of 8 on an H200
# (bf16 and fp32 alike; benchmarks/gpu_shapes.py). Inference passes (validation, extraction) keep each
# image's aspect ratio, so textures' 90 val images make ~40 shapes. Training stays in channels_last: its
# crops are one shape, whose plans cuDNN keeps for every later epoch.
GPU_LAYOUT_COSTS_MS = {
    "channels_last": (1100.0, 3.5),
    "contiguous": (50.0, 6.0),
    "no_cudnn": (9.0, 8.5),  # PyTorch's own convolution kernels: no plans to build
}


def gpu_layout(batch_shapes: Sequence[tuple[int, ...]]) -> str:
    """The layout that runs batches of these shapes fastest on a CUDA GPU, by the measured costs above."""
    distinct, total = len(set(batch_shapes)), len(batch_shapes)

    def cost(layout: str) -> float:
        first, each = GPU_LAYOUT_COSTS_MS[layout]
        return distinct * first + (total - distinct) * each

    return min(GPU_LAYOUT_COSTS_MS, key=cost)


def memory_format(model: torch.nn.Module) -> torch.memory_format:
    """channels_last or contiguous_format, read off the first convolution kernel wider than 1x1 (a 1x1
    kernel is both)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[2] * p.shape[3] > 1:
            return torch.contiguous_format if p.is_contiguous() else torch.channels_last
    return torch.contiguous_format


def _is_depthwise(m: torch.nn.Module) -> bool:
    return isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _forward_in_fp32(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The convolution's own forward, outside CPU autocast: fp32 in and out."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return type(self).forward(self, x.float())
    return type(self).forward(self, x)


@dataclass(frozen=True)
class Compute:
    """The resolved device and precision, and what follows from them."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16
    layout: str = ""  # set by shaped_pass on a GPU: one of GPU_LAYOUT_COSTS_MS

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto") -> Compute:
        from zoo.training import distributed

        world = distributed.world()
        chosen = world.device if world.distributed else resolve_device(device)  # torchrun: a GPU per rank
        return cls(chosen, resolve_precision(precision, chosen))

    @property
    def on_gpu(self) -> bool:
        return self.device.type in ("cuda", "mps")

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches copy to a CUDA GPU asynchronously, overlapping the next batch's decoding."""
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        """NHWC activations: oneDNN's CPU kernels run them faster (the full training step measured 1.4x
        contiguous fp32 in benchmarks/training_speed.py), and so does cuDNN on a GPU, once per shape
        (2.0x in fp32 and 2.1x in bf16 on an H200, benchmarks/training_precision.py): see shaped_pass."""
        if self.layout:
            return self.layout == "channels_last"
        return self.device.type in ("cpu", "cuda")

    @contextlib.contextmanager
    def shaped_pass(self, model: torch.nn.Module, batch_shapes: Sequence[tuple[int, ...]]) -> Iterator[Compute]:
        """`model` (and cuDNN) set up for one pass over batches of these shapes; yields the Compute to batch with.

        On a GPU the layout is gpu_layout's pick: a pass over many shapes with NHWC kernels would spend
        most of its time building cuDNN plans (85 s of textures' 90-second head run on an H200). Elsewhere
        nothing changes: this Compute is the one to batch with. The model gets its layout back afterwards.
        """
        if self.device.type != "cuda":
            yield self
            return
        chosen = dataclasses.replace(self, layout=gpu_layout(batch_shapes))
        cudnn, before = torch.backends.cudnn.enabled, memory_format(model)
        model.to(memory_format=torch.channels_last if chosen.channels_last else torch.contiguous_format)
        torch.backends.cudnn.enabled = cudnn and chosen.layout != "no_cudnn"
        try:
            yield chosen
        finally:
            torch.backends.cudnn.enabled = cudnn
            model.to(memory_format=before)

    @property
    def for_evaluation(self) -> Compute:
        """Validation runs in fp32, so the figures a run reports are those of the fp32 graphs export serves."""
        return Compute(self.device, "fp32", self.layout)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.precision, torch.float32)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for the forward pass (and the loss); a no-op in fp32."""
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    @contextlib.contextmanager
    def training_pass(self, model: torch.nn.Module) -> Iterator[None]:
        """While `model` trains under CPU autocast, its depthwise convolutions compute in fp32.

        oneDNN trains bf16 depthwise convolutions slowly on a CPU: efficientnet_lite0's 16 depthwise layers
        took 3.6x as long forward and backward in bf16 as in fp32 on this AVX512-BF16 CPU (up to 16x for
        the stride-2 ones; the 3x3 stride-1 ones are a little faster in bf16), while its other convolutions
        train faster in bf16, and the whole training step ran 1.59x faster with them all in fp32
        (batch 32 at 224 px, benchmarks/depthwise_precision.py).
        Forward-only passes keep them in bf16, which is faster there. Set on the instances only for the
        pass, so the model, its state dict and every exported graph stay as they are.
        """
        if self.device.type != "cpu" or self.precision == "fp32":
            yield
            return
        convs = [m for m in model.modules() if _is_depthwise(m)]
        for m in convs:
            m.forward = types.MethodType(_forward_in_fp32, m)
        try:
            yield
        finally:
            for m in convs:
                del m.forward

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (a disabled scaler)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch on the device, in the model's memory layout."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def describe(self) -> dict[str, str]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return {"device": str(self.device), "name": name, "precision": self.precision,
                "channels_last": str(self.channels_last).lower(),
                # what training_pass leaves depthwise convolutions in
                "depthwise_training": "fp32" if self.device.type == "cpu" else self.precision}


CPU_FP32 = Compute(torch.device("cpu"), "fp32")
