"""Large CPU tensors reused from the heap instead of mapped afresh: glibc's malloc set up for PyTorch passes.

glibc serves every block above its mmap threshold (32 MiB at most) with a fresh mmap and unmaps it on
free, so a CPU pass that allocates the same 25 to 50 MB activations for every batch faults each of
their pages in again: about a million page faults for a plain fp32 training step of
efficientnet_lite0 (batch 32, 224 px) on this 2-core machine. With mmap off (M_MMAP_MAX 0) and up to
1 GiB of free heap kept instead of trimmed (M_TRIM_THRESHOLD), freed blocks are reused: in
alternating fresh processes the fp32 forward pass of BatchNorm recalibration ran 2.55x faster, the
plain fp32 step 1.53x and the bf16 channels-last step 1.09x, for 8 to 29% more peak memory
(benchmarks/cpu_allocator.py); a whole `full` run of the defaults, 1.10x.

Written with mallopt through ctypes because jemalloc and tcmalloc, which PyTorch's CPU tuning guides
recommend, only take effect when preloaded before Python starts (LD_PRELOAD): a pip-installed tool
cannot do that for its user. ZOO_CPU_ALLOCATOR=system leaves glibc's settings alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
from collections.abc import Iterator

ENV = "ZOO_CPU_ALLOCATOR"  # heap (default) or system
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
GLIBC_TRIM_THRESHOLD, GLIBC_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults, put back afterwards
KEEP_FREE_BYTES = 1 << 30  # free heap kept for the next batch rather than handed back to the system

_active = 0  # nesting depth: `auto` runs the advisor inside finetune


@functools.cache  # platform.libc_ver reads the Python executable: once per process
def _libc() -> ctypes.CDLL | None:
    """glibc, where this process runs on it; None on macOS, Windows and musl."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def mode() -> str:
    """What heap_reuse does in this process: "heap" (glibc tuned as above) or "system" (left alone)."""
    wanted = os.environ.get(ENV, "heap").strip().lower()
    if wanted not in ("heap", "system"):
        from zoo.errors import UsageError

        raise UsageError(f"{ENV}={wanted!r} is not a choice: use heap (the default) or system.")
    return "heap" if wanted == "heap" and _libc() is not None else "system"


def mode_for(device_type: str) -> str:
    """The mode heap_reuse gives a run on this device: recorded in config.json (compute.cpu_allocator)."""
    chosen = mode()
    return chosen if device_type == "cpu" else "system"


@contextlib.contextmanager
def heap_reuse(device_type: str = "cpu") -> Iterator[str]:
    """glibc set to reuse freed CPU tensors while the block runs on the CPU; yields the mode in force.

    Afterwards glibc's default limits come back and the free heap goes back to the system
    (malloc_trim); glibc's dynamic mmap threshold stays off from then on, as after any mallopt call.
    On a GPU, and wherever glibc is not the C library, nothing changes.
    """
    global _active
    chosen = mode_for(device_type)  # a bad ZOO_CPU_ALLOCATOR fails on any device
    if _active:
        yield "heap"
        return
    libc = _libc()
    if chosen == "system" or libc is None:
        yield "system"
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES)
    _active += 1
    try:
        yield "heap"
    finally:
        _active -= 1
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)
