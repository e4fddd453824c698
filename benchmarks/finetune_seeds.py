"""`full` and `partial` under the new training defaults against the loop before them, over several seeds, side by side.

benchmarks/strategies.py runs one seed, and on these val sets (80 to 100 images) one image is a point
or more: a single run cannot tell a change of defaults from the luck of one seed. This runs each
dataset, strategy and seed twice on the same sample, with the same code and recipe:
- before: 224 px, fp32, contiguous tensors, a random new classifier (what `full` and `partial` ran
  before issue 13);
- now: the defaults (--image-size auto, bf16 autocast on a CPU with bf16 instructions, channels-last;
  --warm-head stays off, its default).
It prints val accuracy and seconds per seed, each configuration's mean, and the mean difference.
`--configs before` runs only the old loop (to set beside a strategies.py run of the same seeds).

    python benchmarks/finetune_seeds.py [--datasets photos faces silhouettes] [--strategies full partial]
        [--seeds 1 2] [--configs before now] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from strategies import DATASETS, EPOCHS


def one_run(data: Path, out: Path, strategy: str, seed: int, before: bool) -> dict:
    from zoo.hardware import Compute
    from zoo.training.finetune import finetune

    options = dict(strategy=strategy, epochs=EPOCHS["small"][strategy], seed=seed, out=out, cache_dir=out.parent / "c")
    tick = time.perf_counter()
    if before:  # channels-last is not a flag, so it is patched off, as in benchmarks/training_speed.py
        with mock.patch.object(Compute, "channels_last", property(lambda self: False)):
            metrics = finetune(data, image_size="224", precision="fp32", warm_head=False, **options)
    else:
        metrics = finetune(data, **options)
    config = json.loads((out / "config.json").read_text())
    return {"accuracy": metrics["accuracy"], "seconds": time.perf_counter() - tick,
            "size": config["preprocess"]["input_size"], "precision": config["compute"]["precision"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["photos", "faces", "silhouettes"], choices=list(DATASETS))
    ap.add_argument("--strategies", nargs="+", default=["full", "partial"], choices=["full", "partial"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["before", "now"], choices=["before", "now"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
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
                for strategy in args.strategies:
                    for label in args.configs:
                        run = one_run(data, work / f"{dataset}-{seed}-{strategy}-{label}" / "run", strategy, seed,
                                      label == "before")
                        results.append({"dataset": dataset, "strategy": strategy, "seed": seed, "config": label, **run})
                        print(f"[{dataset} seed {seed}] {strategy:<7} {label:<6} {run['size']} px {run['precision']}: "
                              f"{100 * run['accuracy']:5.1f}%  {run['seconds']:5.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if len(args.configs) < 2:
        return
    print("\nmean over seeds " + " ".join(map(str, args.seeds)) + ": val accuracy (seconds)")
    for dataset in args.datasets:
        for strategy in args.strategies:
            rows = {c: [r for r in results if (r["dataset"], r["strategy"], r["config"]) == (dataset, strategy, c)]
                    for c in ("before", "now")}
            acc = {c: 100 * statistics.mean(r["accuracy"] for r in rows[c]) for c in rows}
            sec = {c: statistics.mean(r["seconds"] for r in rows[c]) for c in rows}
            print(f"  {dataset:<12} {strategy:<7} before {acc['before']:5.1f}% ({sec['before']:4.0f} s)  now "
                  f"{acc['now']:5.1f}% ({sec['now']:4.0f} s)  difference {acc['now'] - acc['before']:+5.1f} points, "
                  f"time {sec['now'] / sec['before']:.2f}x")


if __name__ == "__main__":
    main()
