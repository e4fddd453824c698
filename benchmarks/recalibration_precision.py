"""Whether BatchNorm recalibration could be cheaper: the same trained weights, their statistics recomputed
in fp32 (what zoo does), under bf16 autocast with channels-last batches, and in fp32 over fewer images.

Recalibration (zoo/training/batchnorm.py) is a forward pass over up to 512 training images before every
validation; in a `full` digits500 run it takes about a fifth of the wall time. This trains `full` on
digits500 with the defaults, then recomputes the statistics on the run's own calibration views: in
fp32; under bf16 autocast, with and without BatchNorm fed fp32; and in fp32 over only the first N
views. Each is scored on 2,000 held-out digits (images the sample left out) in fp32, as export serves
them. It prints the seconds of each pass, how far its statistics are from the fp32 pass over all
views, the test accuracy, and how many predictions agree with those of the fp32 statistics.

    python benchmarks/recalibration_precision.py [--seed 0] [--epochs 4] [--test 2000] [--subsets 200 100]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from finetune_seeds import write_test


def _fp32_input(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() for a in args)


def recalibrate(model: torch.nn.Module, views, mode: str) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """zoo's recalibration (every BatchNorm layer trains in `full`): fp32; bf16 autocast; or bf16 autocast
    with each BatchNorm layer given its input in fp32 (so its statistics are computed in fp32)."""
    from zoo.training.batchnorm import trainable_batchnorms
    from zoo.training.datasets import loader, shape_batches
    from zoo.training.strategies import Plan

    layers = trainable_batchnorms(Plan(model, (), None))
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.train()
    bf16 = mode != "fp32"
    hooks = [m.register_forward_pre_hook(_fp32_input) for m in layers] if mode == "bf16, BatchNorm fp32" else []
    seen, tick = 0, time.perf_counter()
    with torch.no_grad():
        for x, _ in loader(views, shape_batches(range(len(views)), views.shapes(), 32), 0):
            for m in layers:
                m.momentum = len(x) / (seen + len(x))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x.contiguous(memory_format=torch.channels_last if bf16 else torch.contiguous_format))
            seen += len(x)
    seconds = time.perf_counter() - tick
    for h in hooks:
        h.remove()
    model.eval()
    return seconds, [(m.running_mean.clone(), m.running_var.clone()) for m in layers]


def predictions(model: torch.nn.Module, views) -> torch.Tensor:
    from zoo.training.datasets import loader, shape_batches

    with torch.no_grad():
        return torch.cat([model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
                          for x, _ in loader(views, shape_batches(range(len(views)), views.shapes(), 64), 0)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--subsets", type=int, nargs="*", default=[200, 100],
                    help="also fp32 statistics over only the first N calibration images (a cheaper pass)")
    args = ap.parse_args()
    from zoo.data.folder import load_image_folder
    from zoo.data.samples import write_sample
    from zoo.run_dir import load_run
    from zoo.training.augment import item_seed
    from zoo.training.batchnorm import calibration_records
    from zoo.training.datasets import ImageViews, scan_images
    from zoo.training.finetune import finetune

    with tempfile.TemporaryDirectory(prefix="zoo-recal-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ZOO_CACHE_DIR", str(work / "home-cache"))
        write_sample("digits", work / "data", seed=args.seed, limit=500)
        write_test("digits500", work / "data", args.seed, args.test)
        metrics = finetune(work / "data", strategy="full", epochs=args.epochs, seed=args.seed, out=work / "run",
                           cache_dir=work / "cache")
        run = load_run(work / "run")
        model, cfg = run.model.eval().to(memory_format=torch.channels_last), run.preprocess
        data = load_image_folder(work / "data", seed=args.seed)
        train, test = scan_images(data.train, cfg)[0], scan_images(data.test, cfg)[0]
        calibration = calibration_records(train, item_seed(args.seed, "batchnorm"))
        seeds = [item_seed(args.seed, "batchnorm", i) for i in range(len(calibration))]
        labels = torch.tensor([r.label for r in test])
        modes = ("fp32", "bf16", "bf16, BatchNorm fp32", *(f"fp32, {n} images" for n in args.subsets))
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        stats, predicted = {}, {}
        for _ in range(2):  # alternating, each keeps its best time
            for mode in modes:
                first = int(mode.split()[1]) if mode.endswith(" images") else len(calibration)
                subset = ImageViews(calibration[:first], cfg, seeds[:first])
                s, stats[mode] = recalibrate(model, subset, "fp32" if mode.endswith(" images") else mode)
                seconds[mode].append(s)
                predicted[mode] = predictions(model, ImageViews(test, cfg))
        print(f"full on digits500, seed {args.seed}, {args.epochs} epochs; finetune's held-out test accuracy "
              f"{100 * metrics['test']['accuracy']:.2f}% on {len(test)} digits; recalibration over "
              f"{len(calibration)} images, then the test digits scored in fp32:")
        base = stats["fp32"]
        for mode in modes:
            mean_shift = max(float(((a[0] - b[0]).abs() / a[1].sqrt().clamp_min(1e-3)).max())
                             for a, b in zip(base, stats[mode], strict=True))
            var_change = max(float(((a[1] - b[1]).abs() / a[1].clamp_min(1e-6)).max())
                             for a, b in zip(base, stats[mode], strict=True))
            accuracy = float((predicted[mode] == labels).float().mean())
            agree = float((predicted[mode] == predicted["fp32"]).float().mean())
            print(f"  {mode:<21} {min(seconds[mode]):5.1f} s ({min(seconds['fp32']) / min(seconds[mode]):.2f}x fp32)  "
                  f"largest mean shift {mean_shift:.3f} sd, largest variance change {100 * var_change:5.1f}%  "
                  f"test {100 * accuracy:.2f}%  same prediction as fp32 statistics {100 * agree:.2f}%", flush=True)


if __name__ == "__main__":
    main()
