"""zoo.cpu_memory: inside heap_reuse the activations of a pass reuse the memory the last pass freed.

Page faults, not time, tell the two apart: each 51 MB activation (above glibc's largest mmap
threshold) is mapped afresh and faulted in page by page on every pass under glibc's defaults, and
reused from the heap inside heap_reuse. Each case runs in a new Python process, so glibc starts from
its defaults."""
import functools
import os
import subprocess
import sys

import pytest

from zoo.cpu_memory import ENV, heap_reuse, mode, mode_for
from zoo.errors import UsageError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")

FAULTS = """
import resource, torch
from zoo.cpu_memory import heap_reuse

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 32, 3, padding=1))
x = torch.randn(8, 32, 224, 224)

def faults_of_a_third_pass():
    with torch.no_grad():
        net(x)
        net(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

with heap_reuse("{device}") as chosen:
    inside = faults_of_a_third_pass()
print(chosen, inside, faults_of_a_third_pass())
"""


def _faults(device: str = "cpu", env: dict | None = None) -> tuple[str, int, int]:
    return _faults_in_a_new_process(device, tuple(sorted((env or {}).items())))


@functools.cache  # both tests measure glibc's defaults on the CPU: one process (torch import, six passes) serves both
def _faults_in_a_new_process(device: str, env: tuple[tuple[str, str], ...]) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS.format(device=device)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **dict(env)}, check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


def test_inside_the_block_a_pass_reuses_freed_memory_and_afterwards_glibc_maps_again():
    chosen, inside, after = _faults()
    _, system, _ = _faults(env={ENV: "system"})
    assert chosen == "heap"
    assert inside < system / 4, (inside, system)  # reused: the pages were faulted in by the earlier passes
    assert after > 3 * inside, (inside, after)  # glibc's defaults are back: activations are mapped afresh


def test_system_and_a_gpu_leave_glibc_alone():
    for device, env in (("cpu", {ENV: "system"}), ("cuda", {})):
        chosen, inside, after = _faults(device, env)
        assert chosen == "system" and after == pytest.approx(inside, rel=0.05), (device, env, inside, after)


def test_the_mode_is_recorded_and_a_bad_value_is_one_sentence(monkeypatch):
    assert mode_for("cpu") == "heap" and mode_for("cuda") == "system"
    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(UsageError, match=r"ZOO_CPU_ALLOCATOR='jemalloc' is not a choice: use heap .* or system\."):
        mode()
    with pytest.raises(UsageError), heap_reuse("cuda"):
        pass


def test_nested_blocks_keep_the_outer_setting():
    with heap_reuse() as outer, heap_reuse() as inner:
        assert outer == inner == "heap"
