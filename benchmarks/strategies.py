"""Every strategy on every sample dataset, side by side, with the advisor's pick marked.

Datasets: the digits sample subsampled to about 500 images (small, unlike ImageNet), the full
digits sample (5,000 images: large) and the textures sample (small, natural). Each strategy runs
through `zoo.finetune` with the same seed and its default recipe (epochs below), from a cold
feature cache, so wall times include feature extraction.

    python benchmarks/strategies.py [--datasets digits500 digits textures] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

STRATEGIES = ("full", "partial", "head", "svm")
DATASETS = {"digits500": ("digits", 500), "digits": ("digits", None), "textures": ("textures", None)}
# Budgets: image-level strategies get fewer epochs on the large set, where each epoch is 10x longer.
EPOCHS = {"small": {"full": 8, "partial": 8}, "large": {"full": 3, "partial": 3}}


def run(dataset: str, work: Path, model: str, seed: int) -> dict:
    from zoo.advisor import advise
    from zoo.data.samples import write_sample
    from zoo.training.finetune import finetune

    name, limit = DATASETS[dataset]
    data = work / dataset
    write_sample(name, data, seed=seed, limit=limit)
    t0 = time.perf_counter()
    advice = advise(data, model=model, seed=seed)
    advise_s = time.perf_counter() - t0
    print(f"[{dataset}] advisor: {advice.quadrant} -> {advice.strategy} (similarity {advice.similarity:.2f}, "
          f"{advice.images} training images, {advise_s:.0f} s)", flush=True)
    rows = {}
    for strategy in STRATEGIES:
        t0 = time.perf_counter()
        extra = {"epochs": EPOCHS[advice.size][strategy]} if strategy in ("full", "partial") else {}
        if strategy == "svm":
            extra["layer"] = advice.layer or None
        metrics = finetune(data, model=model, strategy=strategy, seed=seed, out=work / f"{dataset}-{strategy}",
                           cache_dir=work / "cache",
                           **{k: v for k, v in extra.items() if v is not None})
        rows[strategy] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                          "seconds": time.perf_counter() - t0, "epochs": metrics["epochs"]}
        print(f"[{dataset}] {strategy:<8} accuracy {100 * metrics['accuracy']:6.2f}%  "
              f"{rows[strategy]['seconds']:7.0f} s", flush=True)
    best = max(rows.values(), key=lambda r: r["accuracy"])["accuracy"]
    pick = advice.strategy
    return {"dataset": dataset, "images": advice.images, "quadrant": advice.quadrant, "pick": pick,
            "layer": advice.layer, "similarity": advice.similarity, "advise_seconds": advise_s, "rows": rows,
            "best_accuracy": best, "pick_gap_points": 100 * (best - rows[pick]["accuracy"])}


def print_table(results: list[dict]) -> None:
    print()
    header = f"{'dataset':<10}{'strategy':<10}{'accuracy':>10}{'wall s':>9}{'time vs head':>14}"
    print(header)
    print("-" * len(header))
    for r in results:
        head_s = r["rows"]["head"]["seconds"]
        for s, row in r["rows"].items():
            mark = "  <- advisor" if s == r["pick"] else ""
            print(f"{r['dataset']:<10}{s:<10}{100 * row['accuracy']:>9.2f}%{row['seconds']:>9.0f}"
                  f"{row['seconds'] / head_s:>13.1f}x{mark}")
        verdict = "within" if r["pick_gap_points"] <= 2 else "NOT within"
        print(f"{'':<10}advisor {r['quadrant']} -> {r['pick']}: {r['pick_gap_points']:.2f} points below the best "
              f"({verdict} 2 points)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zoo-strategies-") as tmp:
        results = [run(d, Path(tmp), args.model, args.seed) for d in args.datasets]
    print_table(results)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "strategies.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
