"""Backbone ranking by the advisor's held-out probe score against the ranking by real `head` val accuracy.

For each dataset and each backbone: the probe score `zoo advise --models` computes (the best
frozen-feature candidate, cross-validated on the training split), the measured ONNX Runtime latency
at batch 1 and 8, and the val accuracy of an actual `head` run. Kendall's tau compares the two
rankings per dataset, once for the best-candidate score the ranking uses and once for the head
candidate's score alone (the classifier `head` trains); the Pareto front is marked. Everything runs
side by side in one process.

    python benchmarks/backbone_ranking.py [--datasets faces photos emoji digits500] [--models available]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DATASETS = {"textures": ("textures", None), "faces": ("faces", None), "emoji": ("emoji", 500),
            "silhouettes": ("silhouettes", 500), "photos": ("photos", 500), "digits500": ("digits", 500)}


def run(dataset: str, models: list[str], work: Path, seed: int) -> dict:
    from scipy.stats import kendalltau

    from zoo.advisor.backbones import rank_backbones
    from zoo.advisor.recommend import AdviseSettings
    from zoo.data.samples import write_sample
    from zoo.training.finetune import finetune

    name, limit = DATASETS[dataset]
    data = work / dataset
    write_sample(name, data, seed=seed, limit=limit)
    cache = work / f"cache-{dataset}"
    ranked = rank_backbones(data, models, AdviseSettings(seed=seed, cache_dir=cache))
    head = {b.model: finetune(data, model=b.model, strategy="head", seed=seed, out=work / f"{dataset}-{b.model}",
                              cache_dir=cache)["accuracy"] for b in ranked}
    names = [b.model for b in ranked]
    def tau(scores: list[float | None]) -> float | None:
        if len(names) < 2 or None in scores:
            return None
        value = float(kendalltau(scores, [head[n] for n in names]).statistic)
        return None if value != value else value  # NaN: one of the rankings is all ties

    tau_best, tau_head = tau([b.score for b in ranked]), tau([b.head_score for b in ranked])
    for b in ranked:
        print(f"[{dataset}] {b.model:<20} probe {100 * b.score:5.1f}%  head val {100 * head[b.model]:5.1f}%  "
              f"{b.latency_ms[1]:6.1f} ms @1  {b.latency_ms[8]:6.1f} ms @8{'  Pareto' if b.pareto else ''}",
              flush=True)
    return {"dataset": dataset, "ranking": [b.to_json() for b in ranked], "head_accuracy": head,
            "kendall_tau": tau_best, "kendall_tau_head_candidate": tau_head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["faces", "photos", "emoji", "digits500"],
                    choices=list(DATASETS))
    ap.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                    help="comma-separated backbones, or `available`")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from zoo.advisor.backbones import parse_models

    models = parse_models(args.models)
    with tempfile.TemporaryDirectory(prefix="zoo-backbones-") as tmp:
        results = [run(d, models, Path(tmp), args.seed) for d in args.datasets]
    print("\n| dataset | backbone | probe score (best candidate) | head candidate | head val accuracy | ORT ms @1 "
          "| ORT ms @8 | Pareto |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for b in r["ranking"]:
            head = 100 * r["head_accuracy"][b["model"]]
            print(f"| {r['dataset']} | {b['model']} | {100 * b['score']:.1f}% ({b['best']}) | "
                  f"{100 * b['head_score']:.1f}% | {head:.1f}% "
                  f"| {b['latency_ms'][1]:.1f} | {b['latency_ms'][8]:.1f} | {'yes' if b['pareto'] else ''} |")
    def show(t: float | None) -> str:
        return "n/a (a ranking of ties)" if t is None else f"{t:.2f}"

    for r in results:
        print(f"{r['dataset']}: Kendall tau against the ranking by head val accuracy: best-candidate probe score "
              f"{show(r['kendall_tau'])}, head-candidate probe score {show(r['kendall_tau_head_candidate'])}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "backbone_ranking.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
