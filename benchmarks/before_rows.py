"""`head`, `svm` and `auto` rows of an older commit, for seeds its own benchmarks/strategies.py was not run with.

The code before issue 13 has a strategies.py that runs every strategy for one seed; its `full` and
`partial` rows take 4-6 minutes each on a 2-core CPU. This runs only the cheap rows, through that
commit's own helpers (`_finetune`, `_auto`) and its own zoo package, so that the rows can be set beside
`benchmarks/strategies.py --seeds ...` of the code now:

    git worktree add /tmp/before d3f89ea
    cd /tmp/before && PYTHONPATH=/tmp/before python /path/to/benchmarks/before_rows.py --worktree /tmp/before \\
        --seeds 1 2 --out before_rows.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

DATASETS = ["silhouettes", "emoji", "photos", "faces", "digits500", "textures"]
MODEL = "efficientnet_lite0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worktree", type=Path, required=True, help="a checkout of the older commit (also on PYTHONPATH)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.worktree / "benchmarks"))
    import strategies as older  # the older commit's benchmark helpers

    from zoo.data.samples import write_sample

    rows: list[dict] = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="zoo-before-") as tmp:
            work = Path(tmp)
            for dataset in args.datasets:
                name, limit, _ = older.DATASETS[dataset]
                data = work / dataset
                write_sample(name, data, seed=seed, limit=limit)
                found = {s: older._finetune(data, work / f"{dataset}-{s}", work / f"cache-{dataset}-{s}", seed, MODEL,
                                            strategy=s) for s in ("head", "svm")}
                auto, advice = older._auto(data, work, dataset, MODEL, seed)
                rows.append({"dataset": dataset, "seed": seed, "rows": found, "auto": auto,
                             "pick": advice["strategy"], "layer": advice["layer"]})
                print(f"[{dataset} seed {seed}] head {100 * found['head']['accuracy']:.1f}%  svm "
                      f"{100 * found['svm']['accuracy']:.1f}%  auto -> {advice['strategy']} "
                      f"{100 * auto['accuracy']:.1f}%", flush=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")  # after every set: a stopped run keeps it


if __name__ == "__main__":
    main()
