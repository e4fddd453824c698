"""Every strategy and `auto` on the packaged datasets, side by side in one run.

For each dataset: full, partial, head and svm through `zoo.finetune` (same seed, default recipes,
fewer epochs for the image-level strategies, below), each from its own cold feature cache, so wall
times include feature extraction; then `auto` from another cold cache: the advisor (candidates
scored on the training split, pilots where they apply) followed by the strategy it picks, exactly
what `zoo finetune --strategy auto` runs, with the same epochs as that strategy's row. The table
shows each strategy's val accuracy and time, auto's pick, accuracy and time, its gap to the best
strategy and its time as a multiple of the picked strategy's; and the similarity score of each set.

    python benchmarks/strategies.py [--datasets textures digits500 ...] [--strategies head svm] [--out DIR]
        [--seeds 0 1 2] [--warm-head] [--before benchmarks/results/strategies-before-issue13.json]
        [--before-tree /tmp/before] [--test 1000]

With several --seeds, each seed draws its own split of the sample (write_sample's seed) and trains with
that seed; after the per-seed tables a last table gives each dataset's mean over seeds, and auto's gap
to the best strategy by those means: on 80 to 100 val images one image is a point or more, so a
single split cannot tell a one-image difference from a better choice.

With --before-tree (a checkout of an older commit: `git worktree add /tmp/before d3f89ea`), every
dataset is run twice side by side, by the older code (its own zoo package and its own strategies.py)
and by this one, each in a fresh process, in alternating order; the table against it follows each
dataset. Times taken on different days are not comparable on a shared machine (this 2-core CPU has
run the same code 2x slower on some afternoons), so "faster than before" is measured this way.

--test N (digits500, silhouettes, emoji) also scores every finished run, the older tree's too, with this
tree's `zoo evaluate` on up to N images the sample left out, the same for both sides of a seed
(benchmarks/held_out.py): a paired yardstick of hundreds of images where val has under a hundred.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from held_out import HELD_OUT

STRATEGIES = ("full", "partial", "head", "svm")
# name: (sample set, image limit, character)
DATASETS = {
    "textures": ("textures", None, "natural textures"),
    "digits500": ("digits", 500, "handwritten digits"),
    "photos": ("photos", 500, "natural colour photo crops"),
    "faces": ("faces", None, "grey face photos"),
    "silhouettes": ("silhouettes", 500, "animal silhouettes"),
    "emoji": ("emoji", 500, "symbolic icons"),
    "digits": ("digits", None, "handwritten digits, large"),
}
NATURAL = {"textures", "photos", "faces"}  # should score above the symbolic and synthetic sets
# Image-level strategies get fewer epochs on the large set, where each epoch is 10x longer.
EPOCHS = {"small": {"full": 8, "partial": 8}, "large": {"full": 3, "partial": 3}}


def _finetune(data: Path, out: Path, cache: Path, seed: int, model: str, **options) -> dict:
    from zoo.training.finetune import finetune

    t0 = time.perf_counter()
    metrics = finetune(data, model=model, seed=seed, out=out, cache_dir=cache, **options)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "epochs": metrics["epochs"],
            "seconds": time.perf_counter() - t0}


def _auto(data: Path, work: Path, dataset: str, model: str, seed: int) -> tuple[dict, dict]:
    """The advisor, then its pick: what --strategy auto does, timed together, from a cold cache."""
    from joblib.externals.loky import get_reusable_executor

    from zoo.advisor.recommend import AdviseSettings, advise

    cache = work / f"cache-{dataset}-auto"
    # A fresh `zoo finetune` has no joblib worker processes left over from earlier rows (zoo's own CV runs in
    # threads now, but a library may still start a pool).
    get_reusable_executor().shutdown(wait=True)
    t0 = time.perf_counter()
    advice = advise(data, model=model, settings=AdviseSettings(seed=seed, cache_dir=cache))
    extra = {"epochs": EPOCHS[advice.size][advice.strategy]} if advice.strategy in ("full", "partial") else {}
    if advice.layer:
        extra["layer"] = advice.layer
    row = _finetune(data, work / f"{dataset}-auto", cache, seed, model, strategy=advice.strategy, **extra)
    row["seconds"] = time.perf_counter() - t0
    return row, advice.to_json()


def run(dataset: str, work: Path, model: str, seed: int, strategies: tuple[str, ...] = STRATEGIES,
        warm_head: bool = False) -> dict:
    from zoo.data.samples import write_sample
    from zoo.thresholds import is_small

    name, limit, character = DATASETS[dataset]
    data = work / dataset
    counts = write_sample(name, data, seed=seed, limit=limit)
    size = "small" if is_small(sum(counts["train"].values())) else "large"
    rows = {}
    for strategy in strategies:
        extra = {"epochs": EPOCHS[size][strategy], "warm_head": warm_head} if strategy in ("full", "partial") else {}
        rows[strategy] = _finetune(data, work / f"{dataset}-{strategy}", work / f"cache-{dataset}-{strategy}", seed,
                                   model, strategy=strategy, **extra)
        print(f"[{dataset}] {strategy:<8} accuracy {100 * rows[strategy]['accuracy']:6.2f}%  "
              f"{rows[strategy]['seconds']:7.0f} s", flush=True)
    auto, advice = _auto(data, work, dataset, model, seed)
    print(f"[{dataset}] auto -> {advice['strategy']}{' on ' + advice['layer'] if advice['layer'] else ''}: "
          f"accuracy {100 * auto['accuracy']:.2f}%  {auto['seconds']:.0f} s", flush=True)
    if advice["strategy"] not in rows:  # a partial run (--strategies) that left out the pick: run it for the ratio
        extra = {"epochs": EPOCHS[size][advice["strategy"]]} if advice["strategy"] in ("full", "partial") else {}
        rows[advice["strategy"]] = _finetune(data, work / f"{dataset}-{advice['strategy']}",
                                             work / f"cache-{dataset}-{advice['strategy']}", seed, model,
                                             strategy=advice["strategy"], **extra)
    best = max(r["accuracy"] for r in rows.values())
    return {"dataset": dataset, "character": character, "images": advice["images"], "size": advice["size"],
            "similarity": advice["similarity"], "quadrant": advice["quadrant"], "prior": advice["prior_strategy"],
            "pick": advice["strategy"], "layer": advice["layer"], "rows": rows, "auto": auto,
            "candidates": advice["candidates"], "evidence": advice["evidence"], "best_accuracy": best,
            "auto_gap_points": 100 * (best - auto["accuracy"]),
            "auto_time_ratio": auto["seconds"] / rows[advice["strategy"]]["seconds"]}


def run_in_tree(tree: Path, dataset: str, work: Path, model: str, seed: int, **options) -> dict:
    """`run` of the code checked out in `tree`, in a fresh process with that tree's zoo package first on the
    path (this script runs there with --in-tree and loads the tree's own strategies.py)."""
    spec = {"tree": str(tree), "dataset": dataset, "work": str(work), "model": model, "seed": seed,
            "options": options, "out": str(work / f"{dataset}-result.json")}
    subprocess.run([sys.executable, __file__, "--in-tree", json.dumps(spec)], check=True, cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(Path(spec["out"]).read_text())


def _in_tree(spec: dict) -> None:
    """The child of run_in_tree: options the tree's run() does not take (an older one) are left out."""
    import importlib.util
    import inspect

    loader = importlib.util.spec_from_file_location("tree_strategies", Path(spec["tree"]) / "benchmarks/strategies.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    taken = inspect.signature(module.run).parameters
    options = {k: v for k, v in spec["options"].items() if k in taken}
    narrowed = ""
    if "strategies" in spec["options"] and "strategies" not in taken and hasattr(module, "STRATEGIES"):
        # An older run() loops over its module's STRATEGIES: narrowing that tuple makes the same choice in the
        # benchmark alone (the tree's zoo package is untouched). Its auto row needs the pick among them.
        module.STRATEGIES = tuple(spec["options"]["strategies"])
        narrowed = "strategies"
    if dropped := sorted(set(spec["options"]) - set(options) - {narrowed}):  # e.g. warm_head, which it lacks
        print(f"[{spec['dataset']}] {spec['tree']} does not take {', '.join(dropped)}: run without", flush=True)
    row = module.run(spec["dataset"], Path(spec["work"]), spec["model"], spec["seed"], **options)
    Path(spec["out"]).write_text(json.dumps(row))


def side_by_side(args: argparse.Namespace) -> None:
    """Every dataset by the older tree and by this one, alternating which runs first."""
    here, found = Path(__file__).resolve().parents[1], {"before": [], "now": []}
    for seed in args.seeds:
        for i, d in enumerate(args.datasets):
            order = [("before", args.before_tree), ("now", here)]
            for side, tree in order if i % 2 == 0 else order[::-1]:
                with tempfile.TemporaryDirectory(prefix=f"zoo-strategies-{side}-") as tmp:
                    row = run_in_tree(tree, d, Path(tmp), args.model, seed,
                                      strategies=tuple(args.strategies), warm_head=args.warm_head)
                    score_held_out(args.test, Path(tmp), d, seed, row)
                found[side].append({**row, "seed": seed, "tree": str(tree)})
                print(f"[{d} seed {seed}] {side} ({tree}) done", flush=True)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "strategies_side_by_side.json").write_text(json.dumps(found, indent=2) + "\n")
            print(f"\nnow, seed {seed}:")
            print_table([r for r in found["now"] if r["seed"] == seed])
            print(f"\nbefore ({args.before_tree}) -> now, seed {seed}, measured side by side:")
            print_against([r for r in found["now"] if r["seed"] == seed],
                          [r for r in found["before"] if r["seed"] == seed])


def score_held_out(count: int, work: Path, dataset: str, seed: int, row: dict) -> None:
    """With --test: every finished run of the row (the older tree's too) scored by this tree on up to `count`
    images its sample left out (benchmarks/held_out.py), the same images for both sides of a seed."""
    if not count:
        return
    from held_out import score_runs, write_test

    name, limit, _ = DATASETS[dataset]
    write_test(name, limit, work / dataset, seed, count)
    runs = {**row["rows"], "auto": row["auto"]}  # the same dicts: score_runs adds test_accuracy to the row's cells
    row["test_images"] = score_runs(work, dataset, runs)
    print(f"[{dataset} seed {seed}] on {row['test_images']} held-out images: "
          + ", ".join(f"{k} {100 * v['test_accuracy']:.2f}%" for k, v in runs.items()), flush=True)


def print_table(results: list[dict]) -> None:
    print()
    print("| data (train images) | similarity | full | partial | head | svm | auto: pick | auto | gap | time vs pick |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        cells = [f"{100 * r['rows'][s]['accuracy']:.1f}%, {r['rows'][s]['seconds']:.0f} s" if s in r["rows"] else "-"
                 for s in STRATEGIES]
        pick = r["pick"] + (f" on {r['layer']}" if r["layer"] else "")
        print(f"| {r['dataset']} ({r['images']}) | {r['similarity']:.2f} | " + " | ".join(cells)
              + f" | {r['quadrant']} prior {r['prior']}: {pick} | {100 * r['auto']['accuracy']:.1f}%, "
              f"{r['auto']['seconds']:.0f} s | {r['auto_gap_points']:.1f} | {r['auto_time_ratio']:.2f}x |")
    natural = [r["similarity"] for r in results if r["dataset"] in NATURAL]
    other = [r["similarity"] for r in results if r["dataset"] not in NATURAL]
    if natural and other:
        verdict = "holds" if min(natural) > max(other) else "DOES NOT hold"
        print(f"\nsimilarity: natural sets {min(natural):.2f}..{max(natural):.2f}, symbolic/synthetic sets "
              f"{min(other):.2f}..{max(other):.2f}: the order natural > symbolic {verdict}")


def print_against(results: list[dict], before: list[dict]) -> None:
    """Each strategy's time and accuracy against an earlier run of this script (its --out JSON)."""
    earlier = {r["dataset"]: r for r in before}
    print("\n| data | " + " | ".join(STRATEGIES) + " | auto |")
    print("| --- | " + " | ".join("---" for _ in STRATEGIES) + " | --- |")
    for r in results:
        if r["dataset"] not in earlier:
            continue
        old = earlier[r["dataset"]]
        pairs = [(old["rows"].get(s), r["rows"].get(s)) for s in STRATEGIES] + [(old["auto"], r["auto"])]
        cells = [f"{b['seconds']:.0f} -> {a['seconds']:.0f} s ({a['seconds'] / b['seconds']:.2f}x), "
                 f"{100 * (a['accuracy'] - b['accuracy']):+.1f} pts" if a and b else "-" for b, a in pairs]
        print(f"| {r['dataset']} | " + " | ".join(cells) + " |")


def mean_over_seeds(runs: list[dict]) -> dict:
    """One dataset's runs (one per seed) as one row: mean accuracy and seconds of every strategy and auto."""
    def mean(rows: list[dict]) -> dict:
        return {"accuracy": statistics.fmean(r["accuracy"] for r in rows),
                "seconds": statistics.fmean(r["seconds"] for r in rows)}

    shared = [s for s in STRATEGIES if all(s in r["rows"] for r in runs)]
    rows = {s: mean([r["rows"][s] for r in runs]) for s in shared}
    auto = mean([r["auto"] for r in runs])
    picks = sorted({r["pick"] + (f" on {r['layer']}" if r["layer"] else "") for r in runs})
    # auto's time against the strategy it picked, per seed, then averaged: the picks may differ between seeds.
    ratio = statistics.fmean(r["auto_time_ratio"] for r in runs)
    best = max(r["accuracy"] for r in rows.values())
    def joined(key: str) -> str:
        return " / ".join(sorted({str(r[key]) for r in runs}))

    return {**runs[0], "rows": rows, "auto": auto, "pick": " / ".join(picks), "layer": None,
            "quadrant": joined("quadrant"), "prior": joined("prior"),
            "similarity": statistics.fmean(r["similarity"] for r in runs), "best_accuracy": best,
            "auto_gap_points": 100 * (best - auto["accuracy"]), "auto_time_ratio": ratio,
            "seeds": [r["seed"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=[d for d in DATASETS if d != "digits"], choices=list(DATASETS))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed, then their means")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES,
                    help="the strategies to run beside auto (auto's pick always runs, for its time ratio)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--warm-head", action="store_true", help="full and partial rows start from a probe "
                    "(zoo finetune --warm-head); auto runs as zoo finetune --strategy auto does")
    ap.add_argument("--before", type=Path, default=None, help="an earlier run's JSON: print times and accuracies "
                    "against it")
    ap.add_argument("--before-tree", type=Path, default=None, help="a checkout of an older commit: run it and "
                    "this code side by side on every dataset, each in a fresh process")
    ap.add_argument("--test", type=int, default=0, help="also score every run on up to N images its sample "
                    "left out (sets of distinct images: " + ", ".join(sorted(HELD_OUT)) + ")")
    ap.add_argument("--in-tree", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.test and not set(args.datasets) <= HELD_OUT:
        ap.error(f"--test needs sets of distinct images: {', '.join(sorted(HELD_OUT))}")
    if args.in_tree:
        _in_tree(json.loads(args.in_tree))
        return
    if args.before_tree:
        side_by_side(args)
        return
    results: list[dict] = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="zoo-strategies-") as tmp:
            for d in args.datasets:
                row = run(d, Path(tmp), args.model, seed, tuple(args.strategies), args.warm_head)
                score_held_out(args.test, Path(tmp), d, seed, row)
                results.append({**row, "seed": seed})
                if args.out:  # after every dataset: a long run that is stopped keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "strategies.json").write_text(json.dumps(results, indent=2) + "\n")
                print(f"\nseed {seed}:")
                print_table([r for r in results if r["seed"] == seed])
                if args.before:
                    print_against([r for r in results if r["seed"] == seed], json.loads(args.before.read_text()))
    if len(args.seeds) > 1:
        means = [mean_over_seeds([r for r in results if r["dataset"] == d]) for d in args.datasets]
        print(f"\nmean over seeds {' '.join(map(str, args.seeds))}:")
        print_table(means)
        if args.out:
            (args.out / "strategies_mean.json").write_text(json.dumps(means, indent=2) + "\n")


if __name__ == "__main__":
    main()
