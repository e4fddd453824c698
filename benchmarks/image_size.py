"""What the training resolution costs in accuracy, side by side in one run: the evidence behind
`--image-size auto` (zoo.training.image_size: native size for a frozen backbone, FINETUNE_FLOOR for
one that learns).

For each packaged dataset, the chosen strategies through `zoo.finetune` at each size, same seed and
recipe, each from its own cold feature cache; it prints val accuracy and wall time per size, and the
size `auto` picks for that data. With several --seeds each seed writes its own sample and the table
gives the mean and the spread over seeds (one val image is a whole point on these sets, so a single
seed cannot tell sizes apart for fine-tuning).

    python benchmarks/image_size.py [--datasets digits500 ...] [--sizes 64 96 128 224] [--strategies head]
                                    [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# name: (sample set, image limit, shorter side to shrink every image to, or None); the small sets of
# benchmarks/strategies.py, and shrunk copies of three of them: tiny images of other kinds than the two
# 28-px sets (handwritten digits, silhouettes), natural ones among them.
DATASETS = {"textures": ("textures", None, None), "digits500": ("digits", 500, None), "photos": ("photos", 500, None),
            "faces": ("faces", None, None), "silhouettes": ("silhouettes", 500, None), "emoji": ("emoji", 500, None),
            "textures28": ("textures", None, 28), "photos28": ("photos", 500, 28), "emoji24": ("emoji", 500, 24)}


def _shrink(data: Path, side: int) -> None:
    """Every image of the sample resized (Lanczos) so that its shorter side is `side` px."""
    from PIL import Image

    for path in sorted(data.rglob("*.png")):
        with Image.open(path) as img:
            w, h = img.size
            scale = side / min(w, h)
            small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        small.save(path)
EPOCHS = {"full": 8, "partial": 8}  # as benchmarks/strategies.py gives the image-level strategies


def _auto_size(data: Path, every_layer_learns: bool) -> tuple[int, float]:
    from PIL import Image

    from zoo.backbones import get_spec
    from zoo.training.image_size import auto_size

    sides = [min(Image.open(p).size) for p in sorted((data / "train").rglob("*.png"))]
    native = get_spec("efficientnet_lite0").pretrained_cfg.input_size
    return auto_size(sides, native, every_layer_learns)[0], statistics.median(sides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128, 224])
    ap.add_argument("--strategies", nargs="+", default=["head"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    from zoo.data.samples import write_sample
    from zoo.training.finetune import finetune

    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-image-size-") as tmp:
        work = Path(tmp)
        for name in args.datasets:
            for strategy in args.strategies:
                results.append({"dataset": name, "strategy": strategy, "sizes": {s: {"runs": []} for s in args.sizes}})
            for seed in args.seeds:
                sample, limit, shrink = DATASETS[name]
                data = work / f"{name}-{seed}"
                write_sample(sample, data, seed=seed, limit=limit)
                if shrink:
                    _shrink(data, shrink)
                for row in results[-len(args.strategies):]:
                    strategy = row["strategy"]
                    row["auto"], row["median_side"] = _auto_size(data, strategy == "full")
                    # sizes alternate within a seed, so drift in machine load falls on both alike
                    for size in args.sizes:
                        tick = time.perf_counter()
                        m = finetune(data, strategy=strategy, image_size=str(size), seed=seed,
                                     out=work / f"{name}-{seed}-{strategy}-{size}",
                                     cache_dir=work / f"cache-{name}-{seed}-{size}",
                                     **({"epochs": EPOCHS[strategy]} if strategy in EPOCHS else {}))
                        run = {"seed": seed, "accuracy": m["accuracy"], "seconds": time.perf_counter() - tick}
                        row["sizes"][size]["runs"].append(run)
                        print(f"[{name} seed {seed}] {strategy} at {size} px: {100 * run['accuracy']:.1f}% "
                              f"{run['seconds']:.0f} s", flush=True)
    for row in results:
        for cell in row["sizes"].values():
            accs = [100 * r["accuracy"] for r in cell["runs"]]
            cell["accuracy"] = statistics.mean(accs) / 100
            cell["spread"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cell["seconds"] = statistics.mean(r["seconds"] for r in cell["runs"])
    seeds = f" (mean ± std over seeds {', '.join(map(str, args.seeds))})" if len(args.seeds) > 1 else ""
    print("\n| data (median side, auto) | strategy | " + " | ".join(f"{s} px{seeds}" for s in args.sizes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in args.sizes) + " |")
    for r in results:
        cells = [f"{100 * v['accuracy']:.1f}%" + (f" ± {v['spread']:.1f}" if seeds else "") + f", {v['seconds']:.0f} s"
                 for v in r["sizes"].values()]
        print(f"| {r['dataset']} ({r['median_side']:g} px, auto {r['auto']}) | {r['strategy']} | "
              + " | ".join(cells) + " |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "image_size.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
