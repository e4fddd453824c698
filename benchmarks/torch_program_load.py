"""Loading the torch runtime's program (model.pt2): the SAME padding as zoo writes it vs written with size % 2.

A TorchServe worker of the torch runtime loads model.pt2 when it starts, and the time goes into
parsing the program's symbolic shape expressions. efficientnet_lite's stride-2 convolutions pad by
an amount computed from the input size; written as `(k - 3) // 2 + size % 2` the expression of each
layer's size contained the previous one twice. zoo.backbones.efficientnet_lite.SameConv2d writes
the same amount as `2 * ceil(size / 2) - size + (k - 3) // 2`. Both programs are made from the same
weights, checked equal on odd sizes, and each is exported, then loaded `--repeats` times in fresh
processes, alternating, so that background load falls on both alike.

    python benchmarks/torch_program_load.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

LOAD = "import sys, torch; torch.export.load(sys.argv[1])"


def mod_padding_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The padding as zoo wrote it before (the same numbers)."""
    k = self.kernel_size[0]
    h, w = x.shape[-2], x.shape[-1]
    after = (k - 1) // 2
    x = F.pad(x, [(k - 3) // 2 + w % 2, after, (k - 3) // 2 + h % 2, after])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def export(run: Path, out: Path) -> tuple[Path, float]:
    from zoo.export.archive import export_torch_program

    tick = time.perf_counter()
    path = export_torch_program(run, out)
    return path, time.perf_counter() - tick


def timed_load(path: Path) -> float:
    tick = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD, str(path)], check=True, capture_output=True)
    return time.perf_counter() - tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serve_helpers import write_run

    from zoo.backbones.efficientnet_lite import SameConv2d

    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp) / "run")  # packaged efficientnet_lite0 weights, 3 classes
        now, now_s = export(run, Path(tmp) / "now")
        zoo_forward = SameConv2d.forward
        SameConv2d.forward = mod_padding_forward  # type: ignore[method-assign]
        try:
            before, before_s = export(run, Path(tmp) / "before")
        finally:
            SameConv2d.forward = zoo_forward  # type: ignore[method-assign]
        a, b = torch.export.load(str(now)).module(), torch.export.load(str(before)).module()
        for h, w in ((224, 224), (97, 301), (33, 35)):
            x = torch.randn(2, 3, h, w)
            with torch.no_grad():
                assert all(torch.equal(p, q) for p, q in zip(a(x), b(x), strict=True)), (h, w)
        times: dict[str, list[float]] = {"now": [], "before": []}
        for _ in range(args.repeats):
            times["now"].append(timed_load(now))
            times["before"].append(timed_load(before))
        n, o = statistics.median(times["now"]), statistics.median(times["before"])
        print(f"efficientnet_lite0 model.pt2, median of {args.repeats} fresh-process loads: padding with size % 2 "
              f"{o:.1f} s, padding with ceil(size / 2) {n:.1f} s: {n / o:.2f}x the time")
        print(f"torch.export of the program: {before_s:.1f} s before, {now_s:.1f} s now ({now_s / before_s:.2f}x); "
              "outputs bit-identical at 224x224, 97x301 and 33x35")


if __name__ == "__main__":
    main()
