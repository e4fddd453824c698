"""Inference speed of the exported efficientnet_lite0 classifier: PyTorch eager, ORT fp32, ORT int8.

    python benchmarks/inference.py [--run RUN_DIR] [--rounds 5] [--runs 20]

Without --run it fine-tunes lite0 (head strategy) on a small textures sample in a temporary folder,
then `zoo export --quantize int8` (gate opened wide: speed is measured here, accuracy in the report).
All three engines run in this one process on the same inputs, interleaved round by round so that
load from other processes falls on all of them alike; each figure is the median over rounds of the
median over runs. Targets on a 2-core CPU: ORT fp32 latency at most 0.5x eager; int8 at least 1.5x
faster than fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from zoo.data.samples import write_sample
from zoo.export.onnx_export import export_run
from zoo.inference import CPU, open_session
from zoo.run_dir import load_run


def make_run(tmp: Path) -> Path:
    data = tmp / "textures"
    write_sample("textures", data, seed=0, limit=120)
    from zoo import finetune

    finetune(data, model="efficientnet_lite0", strategy="head", augment=False, out=tmp / "run", cache_dir=tmp / "cache",
             show_progress=False)
    return tmp / "run"


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return open_session(path, [CPU], threads=threads, inter_op_threads=1, options=options)


def median_seconds(fn, x, runs: int) -> float:
    fn(x)  # warm-up (first call allocates)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a lite0 run directory (default: make one on the textures sample)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="timed calls per engine per round")
    parser.add_argument("--size", type=int, default=224, help="square input size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and ORT alike")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = args.run or make_run(tmp)
        out = tmp / "export"
        report = export_run(run_dir, out, quantize="int8", max_accuracy_drop=100.0)
        model = load_run(run_dir).model.eval()
        torch.set_num_threads(args.threads)
        fp32 = ort_session(out / "classifier.onnx", args.threads)
        int8 = ort_session(out / "classifier.int8.onnx", args.threads)

        def eager(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        engines = {"PyTorch eager": eager,
                   "ORT fp32": lambda x: fp32.run(["logits"], {"image": x}),
                   "ORT int8": lambda x: int8.run(["logits"], {"image": x})}
        rng = np.random.default_rng(0)
        inputs = {b: rng.standard_normal((b, 3, args.size, args.size), dtype=np.float32) for b in (1, 8)}
        samples = {(name, b): [] for name in engines for b in inputs}
        for _ in range(args.rounds):
            for b, x in inputs.items():
                for name, fn in engines.items():
                    samples[(name, b)].append(median_seconds(fn, x, args.runs if b == 1 else max(3, args.runs // 4)))
        sec = {k: statistics.median(v) for k, v in samples.items()}

    lat = {name: 1000 * sec[(name, 1)] for name in engines}
    thr = {name: 8 / sec[(name, 8)] for name in engines}
    print(f"efficientnet_lite0 classifier, {args.size}x{args.size}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; ORT {ort.__version__}, "
          f"torch {torch.__version__}")
    print(f"{'engine':<14} {'latency b1 (ms)':>16} {'vs eager':>9} {'vs fp32':>8} {'throughput b8 (img/s)':>22} "
          f"{'vs eager':>9} {'vs fp32':>8}")
    for name in engines:
        print(f"{name:<14} {lat[name]:>16.2f} {lat[name] / lat['PyTorch eager']:>8.2f}x "
              f"{lat[name] / lat['ORT fp32']:>7.2f}x {thr[name]:>22.1f} {thr[name] / thr['PyTorch eager']:>8.2f}x "
              f"{thr[name] / thr['ORT fp32']:>7.2f}x")
    fp32_vs_eager = lat["ORT fp32"] / lat["PyTorch eager"]
    int8_speedup_b1 = lat["ORT fp32"] / lat["ORT int8"]
    int8_speedup_b8 = thr["ORT int8"] / thr["ORT fp32"]
    print(f"ORT fp32 latency / eager latency: {fp32_vs_eager:.2f} "
          f"(target <= 0.50: {'met' if fp32_vs_eager <= 0.5 else 'MISSED'})")
    print(f"int8 speed-up over fp32: {int8_speedup_b1:.2f}x at batch 1, {int8_speedup_b8:.2f}x at batch 8 "
          f"(target >= 1.50: {'met' if min(int8_speedup_b1, int8_speedup_b8) >= 1.5 else 'MISSED'})")
    v = report["variants"]["int8"]
    print(f"int8 val accuracy {v['val_accuracy']:.2%} vs fp32 {v['fp32_val_accuracy']:.2%} ({v['val_images']} images); "
          f"quantized ops {json.dumps(v['ops']['quantized'])}")


if __name__ == "__main__":
    main()
