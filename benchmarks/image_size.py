"""What the training resolution costs in accuracy, side by side in one run: the evidence behind
`--image-size auto` (zoo.training.image_size: native size for a frozen backbone, FINETUNE_FLOOR for
one that learns).

For each packaged dataset, the chosen strategies through `zoo.finetune` at each size, same seed and
recipe, each from its own cold feature cache; it prints val accuracy and wall time per size, and the
size `auto` picks for that data.

    python benchmarks/image_size.py [--datasets digits500 ...] [--sizes 64 96 128 224] [--strategies head]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# name: (sample set, image limit); the small sets of benchmarks/strategies.py
DATASETS = {"textures": ("textures", None), "digits500": ("digits", 500), "photos": ("photos", 500),
            "faces": ("faces", None), "silhouettes": ("silhouettes", 500), "emoji": ("emoji", 500)}
EPOCHS = {"full": 8, "partial": 8}  # as benchmarks/strategies.py gives the image-level strategies


def _auto_size(data: Path, trains_backbone: bool) -> tuple[int, float]:
    from PIL import Image

    from zoo.backbones import get_spec
    from zoo.training.image_size import auto_size

    sides = [min(Image.open(p).size) for p in sorted((data / "train").rglob("*.png"))]
    native = get_spec("efficientnet_lite0").pretrained_cfg.input_size
    return auto_size(sides, native, trains_backbone)[0], statistics.median(sides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128, 224])
    ap.add_argument("--strategies", nargs="+", default=["head"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    from zoo.data.samples import write_sample
    from zoo.training.finetune import finetune

    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-image-size-") as tmp:
        work = Path(tmp)
        for name in args.datasets:
            sample, limit = DATASETS[name]
            write_sample(sample, work / name, seed=args.seed, limit=limit)
            for strategy in args.strategies:
                auto, median = _auto_size(work / name, strategy in ("full", "partial"))
                row = {"dataset": name, "strategy": strategy, "median_side": median, "auto": auto, "sizes": {}}
                for size in args.sizes:
                    tick = time.perf_counter()
                    m = finetune(work / name, strategy=strategy, image_size=str(size), seed=args.seed,
                                 out=work / f"{name}-{strategy}-{size}", cache_dir=work / f"cache-{name}-{size}",
                                 **({"epochs": EPOCHS[strategy]} if strategy in EPOCHS else {}))
                    row["sizes"][size] = {"accuracy": m["accuracy"], "seconds": time.perf_counter() - tick}
                    print(f"[{name}] {strategy} at {size} px: {100 * m['accuracy']:.1f}% "
                          f"{row['sizes'][size]['seconds']:.0f} s", flush=True)
                results.append(row)
    print("\n| data (median side, auto) | strategy | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in args.sizes) + " |")
    for r in results:
        cells = [f"{100 * v['accuracy']:.1f}%, {v['seconds']:.0f} s" for v in r["sizes"].values()]
        print(f"| {r['dataset']} ({r['median_side']:g} px, auto {r['auto']}) | {r['strategy']} | "
              + " | ".join(cells) + " |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "image_size.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
