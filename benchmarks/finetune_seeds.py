"""`full` and `partial` under the new training defaults against the loop before them, over several seeds, side by side.

benchmarks/strategies.py runs one seed, and on these val sets (80 to 100 images) one image is a point
or more: a single run cannot tell a change of defaults from the luck of one seed. This runs each
dataset, strategy and seed twice on the same sample, with the same code and recipe:
- before: 224 px, fp32, contiguous tensors, a random new classifier (what `full` and `partial` ran
  before issue 13);
- now: the defaults (--image-size auto, bf16 autocast on a CPU with bf16 instructions, channels-last;
  --warm-head stays off, its default);
- now-fp32 (only when asked for): the defaults in fp32, to tell bf16's share of a difference.
It prints val accuracy and seconds per seed, each configuration's mean, and the mean difference.
`--configs before` runs only the old loop (to set beside a strategies.py run of the same seeds).

`--test N` adds a larger yardstick where the source has images the sample left out (digits500,
silhouettes, emoji): up to N of them, none in the sample, are written as DIR/test, which training
never reads and finetune scores at the end with the best epoch. Both configurations of a seed are
scored on the same test images, so their difference is paired and a point is not one image.

    python benchmarks/finetune_seeds.py [--datasets photos faces silhouettes] [--strategies full partial]
        [--seeds 1 2] [--configs before now] [--test 2000] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from held_out import HELD_OUT, write_test
from strategies import DATASETS, EPOCHS

CONFIGS = {"before": dict(image_size="224", precision="fp32", warm_head=False), "now": {},
           "now-fp32": dict(precision="fp32")}


def one_run(data: Path, out: Path, strategy: str, seed: int, config: str) -> dict:
    from zoo.hardware import Compute
    from zoo.training.finetune import finetune

    options = dict(strategy=strategy, epochs=EPOCHS["small"][strategy], seed=seed, out=out, cache_dir=out.parent / "c")
    tick = time.perf_counter()
    # channels-last is not a flag, so "before" patches it off, as benchmarks/training_speed.py does
    contiguous = mock.patch.object(Compute, "channels_last", property(lambda self: False))
    with contiguous if config == "before" else contextlib.nullcontext():
        metrics = finetune(data, **CONFIGS[config], **options)
    recorded = json.loads((out / "config.json").read_text())
    test = metrics.get("test") or {}
    return {"accuracy": metrics["accuracy"], "test_accuracy": test.get("accuracy"),
            "seconds": time.perf_counter() - tick,
            "size": recorded["preprocess"]["input_size"], "precision": recorded["compute"]["precision"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["photos", "faces", "silhouettes"], choices=list(DATASETS))
    ap.add_argument("--strategies", nargs="+", default=["full", "partial"], choices=["full", "partial"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["before", "now"], choices=list(CONFIGS))
    ap.add_argument("--test", type=int, default=0, help="held-out test images per sample (sets of distinct images)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.test and not set(args.datasets) <= HELD_OUT:
        ap.error(f"--test needs sets of distinct images: {', '.join(sorted(HELD_OUT))}")
    from zoo.data.samples import write_sample

    results = []
    with tempfile.TemporaryDirectory(prefix="zoo-seeds-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ZOO_CACHE_DIR", str(work / "home-cache"))
        for dataset in args.datasets:
            name, limit, _ = DATASETS[dataset]
            for seed in args.seeds:
                data = work / f"{dataset}-{seed}"
                write_sample(name, data, seed=seed, limit=limit)
                if args.test:
                    written = write_test(name, limit, data, seed, args.test)
                    print(f"[{dataset} seed {seed}] {written} held-out test images", flush=True)
                for strategy in args.strategies:
                    for label in args.configs:
                        out = work / f"{dataset}-{seed}-{strategy}-{label}" / "run"
                        run = one_run(data, out, strategy, seed, label)
                        results.append({"dataset": dataset, "strategy": strategy, "seed": seed, "config": label, **run})
                        test = f"  test {100 * run['test_accuracy']:5.2f}%" if run["test_accuracy"] is not None else ""
                        print(f"[{dataset} seed {seed}] {strategy:<7} {label:<6} {run['size']} px {run['precision']}: "
                              f"{100 * run['accuracy']:5.1f}%{test}  {run['seconds']:5.0f} s", flush=True)
                        if args.out:  # after every run: a long benchmark that stops keeps what it measured
                            args.out.write_text(json.dumps(results, indent=1))
    if len(args.configs) > 1:
        summary(results, args.datasets, args.strategies, args.seeds, args.configs)


def summary(results: list[dict], datasets: list[str], strategies: list[str], seeds: list[int],
            configs: list[str]) -> None:
    """Each configuration after the first against the first: mean val accuracy and seconds, and with
    held-out test images their paired difference per seed and its standard error."""
    base = configs[0]
    print("\nmean over seeds " + " ".join(map(str, seeds)) + f": val accuracy (seconds), against {base}")
    for dataset in datasets:
        for strategy in strategies:
            rows = {c: [r for r in results if (r["dataset"], r["strategy"], r["config"]) == (dataset, strategy, c)]
                    for c in configs}
            acc = {c: 100 * statistics.mean(r["accuracy"] for r in rows[c]) for c in configs}
            sec = {c: statistics.mean(r["seconds"] for r in rows[c]) for c in configs}
            print(f"  {dataset:<12} {strategy:<7} {base} {acc[base]:5.1f}% ({sec[base]:4.0f} s)")
            for other in configs[1:]:
                print(f"    {other:<9} {acc[other]:5.1f}% ({sec[other]:4.0f} s)  difference "
                      f"{acc[other] - acc[base]:+5.1f} points, time {sec[other] / sec[base]:.2f}x")
                if rows[other][0]["test_accuracy"] is not None:
                    print("      " + test_line(rows[base], rows[other]))


def test_line(base: list[dict], other: list[dict]) -> str:
    """Held-out test accuracy of two configurations and their paired difference, with its standard error."""
    diffs = [100 * (o["test_accuracy"] - b["test_accuracy"]) for b, o in zip(base, other, strict=True)]
    means = [100 * statistics.mean(r["test_accuracy"] for r in rows) for rows in (base, other)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return (f"held-out test {means[0]:.2f}% -> {means[1]:.2f}%: difference {statistics.mean(diffs):+.2f} points "
            f"(standard error {se:.2f}; per seed " + ", ".join(f"{d:+.2f}" for d in diffs) + ")")


if __name__ == "__main__":
    main()
