"""Start-up to first prediction: `zoo predict` (ONNX Runtime alone) vs a PyTorch equivalent, side by side.

Each side is a fresh process that classifies one image, as a user or a device boot script would;
the wall time from process start to the printed answer is measured, median of several runs,
alternating the two sides so background load hits both alike.

    python benchmarks/predict_startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH_EQUIVALENT = """
import sys, torch
from zoo.run_dir import load_run
from zoo.preprocess import preprocess
run = load_run(sys.argv[1])
x = torch.from_numpy(preprocess(sys.argv[2], run.preprocess)).unsqueeze(0)
with torch.no_grad():
    p = run.model(x).softmax(1)[0]
print(run.labels[int(p.argmax())], float(p.max()))
"""


def prepare(work: Path) -> tuple[Path, Path, Path]:
    from zoo.data.samples import write_sample
    from zoo.export.onnx_export import export_run
    from zoo.training.finetune import finetune

    data = work / "textures"
    write_sample("textures", data, limit=60)
    run = work / "run"
    finetune(data, strategy="head", epochs=3, out=run, views=1)
    export_run(run, work / "export")
    image = sorted((data / "val").rglob("*.png"))[0]
    return run, work / "export", image


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, export_dir, image = prepare(Path(tmp))
        edge_cmd = [sys.executable, "-m", "zoo.cli", "predict", str(image), "--model", str(export_dir), "--json"]
        torch_cmd = [sys.executable, "-c", TORCH_EQUIVALENT, str(run), str(image)]
        timed(edge_cmd), timed(torch_cmd)  # warm the file cache for both
        edge, torch_times = [], []
        for _ in range(args.repeats):
            edge.append(timed(edge_cmd))
            torch_times.append(timed(torch_cmd))
    e, t = statistics.median(edge), statistics.median(torch_times)
    print(f"{'path':<34}{'median s':>10}{'min s':>8}{'ratio':>8}")
    print(f"{'zoo predict (ONNX Runtime only)':<34}{e:>10.2f}{min(edge):>8.2f}{1.0:>8.2f}")
    print(f"{'PyTorch equivalent (load_run)':<34}{t:>10.2f}{min(torch_times):>8.2f}{t / e:>8.2f}")
    print(f"edge start-up to first prediction is {t / e:.1f}x faster than PyTorch (target: at least 3x)")


if __name__ == "__main__":
    main()
