"""Seconds per epoch of `head` training with and without the bottleneck-feature cache, side by side.

    python benchmarks/bottleneck_cache.py [--data DIR] [--epochs 6] [--uncached-epochs 2]

Without --data it writes the textures sample (330 train / 90 val images) to a temporary folder.
Both runs use the same data, model, seed and augmentation setting, in this one process; the cache
starts empty, so "with cache" epoch 1 includes extracting the features (every augmented view).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from zoo.data.samples import write_sample
from zoo.run_dir import read_json
from zoo.training.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="an ImageFolder (default: the textures sample)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the cached run")
    parser.add_argument("--uncached-epochs", type=int, default=2, help="epochs of the uncached run (slow)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="as `zoo finetune` (default: on for small data)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "textures"
            write_sample("textures", data)
        common = dict(model=args.model, strategy="head", augment=args.augment, seed=0)
        cached = finetune(data, out=tmp / "cached", epochs=args.epochs, cache_dir=tmp / "cache", **common)
        warm = finetune(data, out=tmp / "warm", epochs=args.epochs, cache_dir=tmp / "cache", **common)
        uncached = finetune(data, out=tmp / "uncached", epochs=args.uncached_epochs, cache=False, **common)
        augment = read_json(tmp / "cached" / "config.json")["augment"]

    extraction = cached["feature_cache"]["seconds"]
    with_cache = [s + (extraction if i == 0 else 0.0) for i, s in enumerate(cached["epoch_seconds"])]
    warm_cache = [s + (warm["feature_cache"]["seconds"] if i == 0 else 0.0)
                  for i, s in enumerate(warm["epoch_seconds"])]
    without = uncached["epoch_seconds"]
    print(f"head on {data} ({cached['images']['train']} train / {cached['images']['val']} val images), {args.model}, "
          f"augmentation {'on' if augment else 'off'}; seconds per epoch "
          "(training + validation; epoch 1 with cache includes extracting every view)")
    print(f"{'epoch':>5} | {'with cache':>11} | {'warm cache':>11} | {'without cache':>13}")
    for i in range(max(len(with_cache), len(without))):
        cells = [f"{col[i]:.3f}" if i < len(col) else "-" for col in (with_cache, warm_cache, without)]
        print(f"{i + 1:>5} | {cells[0]:>11} | {cells[1]:>11} | {cells[2]:>13}")
    if len(with_cache) > 1:
        # Both the mean and the median: on a busy machine one slow scheduling slice dominates a 30 ms epoch.
        for name, stat in (("mean", statistics.mean), ("median", statistics.median)):
            later, base = stat(with_cache[1:]), stat(without)
            print(f"epochs after the first ({name}): {later:.4f} s with the cache vs {base:.2f} s without: "
                  f"{base / later:,.0f}x faster")
    print(f"epoch 1 with an empty cache: {with_cache[0]:.1f} s; with a warm cache (a later run): {warm_cache[0]:.3f} s")
    print(f"val accuracy: with cache {cached['accuracy']:.3f}, without {uncached['accuracy']:.3f}")


if __name__ == "__main__":
    main()
