"""glibc's defaults against zoo.cpu_memory.heap_reuse on the CPU passes of `full` fine-tuning, side by side.

Each measurement runs in a fresh Python process (glibc's settings are process-wide), in alternating
order (system, heap, heap, system, ...), so a drift in this machine's speed falls on both:
- the BatchNorm recalibration pass: efficientnet_lite0's fp32 forward, BatchNorm layers in train mode,
  channels-last, batches of 32 at 224 px;
- the plain training step: fp32, contiguous, batch 32 at 224 px (forward, loss, backward, AdamW);
- the new defaults' training step: bf16 autocast, channels-last.
Each prints seconds per batch (median of the timed batches), page faults per batch and the process's peak
resident memory.

    python benchmarks/cpu_allocator.py [--rounds 2] [--batches 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

PASSES = ("recalibration forward (fp32)", "plain step (fp32, contiguous)", "new step (bf16, channels-last)")


def measure(kind: str, batches: int) -> dict:
    """In this process: one pass kind under heap_reuse (or ZOO_CPU_ALLOCATOR=system, set by the caller).
    The training steps are training_speed.py's (its model, optimizer and step body)."""
    import resource

    from training_speed import _full_model, _steps

    from zoo.cpu_memory import heap_reuse

    model, optimizer = _full_model()
    layout = torch.contiguous_format if kind.startswith("plain") else torch.channels_last
    model.to(memory_format=layout)
    batch = [(torch.randn(32, 3, 224, 224), torch.randint(0, 3, (32,)))]

    def one() -> float:
        if not kind.startswith("recalibration"):
            return _steps(model, optimizer, batch, layout, bf16=kind.startswith("new"))
        tick = time.perf_counter()
        with torch.no_grad():  # train mode: BatchNorm normalises with batch statistics, as recalibration does
            model(batch[0][0].contiguous(memory_format=layout))
        return time.perf_counter() - tick

    with heap_reuse("cpu") as mode:
        one()  # warm-up: oneDNN's kernels and the allocator's first blocks
        seconds, faults = [], []
        for _ in range(batches):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds.append(one())
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": statistics.median(seconds), "faults": statistics.median(faults),
            "peak_mb": peak_mb}


def in_fresh_process(kind: str, mode: str, batches: int) -> dict:
    env = {**os.environ, "ZOO_CPU_ALLOCATOR": mode}
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--batches", str(batches)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4, help="timed batches per process")
    ap.add_argument("--one", choices=PASSES, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batches)))
        return
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for kind in PASSES:
            for mode in ("system", "heap") if r % 2 == 0 else ("heap", "system"):
                result = in_fresh_process(kind, mode, args.batches)
                rows.setdefault((kind, mode), []).append(result)
                print(f"  round {r} {kind:<32} {mode:<6} {result['seconds']:6.3f} s/batch  "
                      f"{result['faults']:9.0f} page faults/batch  peak {result['peak_mb']:6.0f} MB", flush=True)
    print(f"\nbatches of 32 at 224 px, efficientnet_lite0, {args.rounds} round(s) in alternating fresh processes:")
    for kind in PASSES:
        system, heap = rows[(kind, "system")], rows[(kind, "heap")]
        s_sec, h_sec = sum(r["seconds"] for r in system), sum(r["seconds"] for r in heap)
        print(f"  {kind:<32} glibc defaults {s_sec / len(system):6.3f} s  heap reuse {h_sec / len(heap):6.3f} s  "
              f"{s_sec / h_sec:4.2f}x faster; page faults {statistics.mean(r['faults'] for r in system):9.0f} -> "
              f"{statistics.mean(r['faults'] for r in heap):7.0f}; peak memory "
              f"{max(r['peak_mb'] for r in system):5.0f} -> {max(r['peak_mb'] for r in heap):5.0f} MB")


if __name__ == "__main__":
    main()
