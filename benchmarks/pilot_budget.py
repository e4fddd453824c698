"""auto's small-data pilot budget on a first run (cold feature cache) and a later one (warm cache).

For each set: a fresh cache folder (features and feature graphs), `advise` once on it cold, then again
with the in-process graph table cleared, as a new `zoo finetune --strategy auto` would start. Prints the
budget, the advisor's reason for its pilots, the pick and the seconds. A budget that follows the cache's
state is a decision that follows it: the same command on the same images should plan the same pilots.

    python benchmarks/pilot_budget.py --sets emoji:500:0 emoji:300:1 --out results/pilot_budget.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def measure(name: str, limit: int, seed: int, work: Path) -> list[dict]:
    from zoo.advisor.recommend import advise
    from zoo.data.samples import write_sample
    from zoo.training import ort_features

    data = work / f"{name}-{limit}-{seed}"
    if not data.exists():
        write_sample(name, data, seed=seed, limit=limit)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    os.environ["ZOO_CACHE_DIR"] = str(cache)
    rows = []
    for run in ("cold", "warm"):
        ort_features._LOADED.clear()  # graphs come from disk, as in a new process
        tick = time.perf_counter()
        advice = dataclasses.asdict(advise(data))
        rows.append({"set": f"{name}:{limit}:{seed}", "run": run, "seconds": round(time.perf_counter() - tick, 1),
                     "pick": [advice["strategy"], advice["layer"]],
                     "budget_s": round(60 * advice["evidence"]["budget_minutes"], 1),
                     "pilots": advice["reasons"]["pilots"], "steps": advice["evidence"]["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(cache)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["emoji:500:0", "emoji:300:1"],
                    help="packaged sample sets as name:limit:seed")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for spec in args.sets for row in measure(*_parse(spec), Path(tmp))]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


def _parse(spec: str) -> tuple[str, int, int]:
    name, limit, seed = spec.split(":")
    return name, int(limit), int(seed)


if __name__ == "__main__":
    main()
