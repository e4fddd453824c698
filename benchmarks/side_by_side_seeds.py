"""Paired accuracy differences over seeds, from the JSON files of `strategies.py --before-tree` runs.

One side-by-side run is one seed, and on val sets of 80 to 100 images one image is a point or more: a
single seed cannot tell a change of code from the luck of a split. This joins every run of a dataset and
seed that both trees made (several files, e.g. seed 0 of all sets and more seeds of a few), and prints per
dataset and strategy the difference now minus before at each seed, their mean and its standard error,
the same on held-out images where the runs were scored on them (strategies.py --test), and the time
ratio now/before of each seed.

    python benchmarks/side_by_side_seeds.py benchmarks/results/strategies_side_by_side*.json
        [--datasets photos emoji] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = ("full", "partial", "head", "svm", "auto")


def paired(files: list[Path]) -> dict[tuple[str, str], dict[int, tuple[dict, dict]]]:
    """(dataset, strategy) -> seed -> (before row, now row), for every cell both sides ran."""
    sides: dict[str, dict[tuple[str, int], dict]] = {"before": {}, "now": {}}
    for path in files:
        found = json.loads(path.read_text())
        for side in sides:
            for run in found.get(side, []):
                cells = {**run["rows"], "auto": run["auto"]}
                sides[side].setdefault((run["dataset"], run["seed"]), {}).update(cells)
    out: dict[tuple[str, str], dict[int, tuple[dict, dict]]] = {}
    for (dataset, seed), before in sides["before"].items():
        now = sides["now"].get((dataset, seed), {})
        for strategy in COLUMNS:
            if strategy in before and strategy in now:
                out.setdefault((dataset, strategy), {})[seed] = (before[strategy], now[strategy])
    return out


def summary(pairs: dict[tuple[str, str], dict[int, tuple[dict, dict]]], datasets: list[str] | None) -> list[dict]:
    rows = []
    for (dataset, strategy), seeds in sorted(pairs.items(), key=lambda kv: (kv[0][0], COLUMNS.index(kv[0][1]))):
        if datasets and dataset not in datasets:
            continue
        order = sorted(seeds)
        diffs = [100 * (seeds[s][1]["accuracy"] - seeds[s][0]["accuracy"]) for s in order]
        ratios = [seeds[s][1]["seconds"] / seeds[s][0]["seconds"] for s in order]
        rows.append({
            "dataset": dataset, "strategy": strategy, "seeds": order,
            "before": [100 * seeds[s][0]["accuracy"] for s in order],
            "now": [100 * seeds[s][1]["accuracy"] for s in order],
            "difference_points": diffs, "mean_difference_points": statistics.fmean(diffs),
            "standard_error": _standard_error(diffs),
            "time_ratio": ratios, **_held_out([seeds[s] for s in order])})
    return rows


def _held_out(pairs: list[tuple[dict, dict]]) -> dict:
    """Where every seed's runs were also scored on held-out images (strategies.py --test): the paired
    differences there, and their mean and standard error."""
    if not pairs or not all("test_accuracy" in b and "test_accuracy" in n for b, n in pairs):
        return {}
    diffs = [100 * (n["test_accuracy"] - b["test_accuracy"]) for b, n in pairs]
    return {"test_difference_points": diffs, "mean_test_difference_points": statistics.fmean(diffs),
            "test_standard_error": _standard_error(diffs)}


def _standard_error(values: list[float]) -> float | None:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = summary(paired(args.files), args.datasets)
    print("| data | strategy | seeds | before | now | now - before (points) | mean (SE) | held-out: now - before "
          "(points), mean (SE) | time now/before |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        se = f" ({r['standard_error']:.1f})" if r["standard_error"] is not None else ""
        held = "-"
        if "test_difference_points" in r:
            held = " / ".join(f"{d:+.1f}" for d in r["test_difference_points"]) + \
                f", {r['mean_test_difference_points']:+.1f}" + \
                (f" ({r['test_standard_error']:.1f})" if r["test_standard_error"] is not None else "")
        print(f"| {r['dataset']} | {r['strategy']} | {' '.join(map(str, r['seeds']))} | "
              f"{' / '.join(f'{a:.1f}' for a in r['before'])} | {' / '.join(f'{a:.1f}' for a in r['now'])} | "
              f"{' / '.join(f'{d:+.1f}' for d in r['difference_points'])} | {r['mean_difference_points']:+.1f}{se} | "
              f"{held} | {' / '.join(f'{t:.2f}x' for t in r['time_ratio'])} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
