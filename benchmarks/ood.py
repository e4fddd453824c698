"""The out-of-distribution score: candidate methods side by side on in/out pairs of the packaged sets.

For each dataset: the sample is written, a `head` run trained (efficientnet_lite0, seed 0, default
recipe, a test split of 20% held out of train) and exported by `zoo export`, which writes the OOD
summary zoo ships (ood.npz). Every image's bottleneck features come from the exported
classifier.onnx's `features` output (ONNX Runtime, one image at a time, as served). For each pair
"in -> out", the in-distribution images are the in set's val split and the outside images the out
set's val split; each method is fitted on the in set's training features and its AUROC
(sklearn.metrics.roc_auc_score, outside = positive) printed side by side. The shipped method is
scored through zoo.inference.OodScorer loaded from the export's ood.npz, with its threshold: the
false-alarm rate on val (about 5% by construction), on the held-out test split, and the share of
outside images it flags.

    python benchmarks/ood.py [--pairs textures:digits500 digits500:textures ...] [--out DIR] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

# name: (sample set, image limit)
DATASETS = {"textures": ("textures", None), "digits500": ("digits", 500), "photos": ("photos", 500),
            "faces": ("faces", None), "silhouettes": ("silhouettes", 500), "emoji": ("emoji", 500)}
PAIRS = ("textures:digits500", "digits500:textures", "photos:faces", "faces:photos", "silhouettes:digits500",
         "emoji:silhouettes", "photos:textures", "digits500:silhouettes")
KNN_K = (1, 5, 10, 20, 50)
MAHALANOBIS = {"maha": (False, None), "maha-l2": (True, None), "maha-l2-pca64": (True, 64)}


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(k: int):
    def fit(train: np.ndarray, labels: np.ndarray):
        bank = l2(train.astype(np.float64))
        kk = min(k, len(bank))
        return lambda z: np.partition(1 - l2(z.astype(np.float64)) @ bank.T, kk - 1, axis=1)[:, kk - 1]
    return fit


def mahalanobis(normalise: bool, pca: int | None):
    """Distance to the nearest class mean under one Ledoit-Wolf-shrunk covariance shared by the classes."""
    from sklearn.covariance import LedoitWolf

    def fit(train: np.ndarray, labels: np.ndarray):
        prep = (lambda z: l2(z.astype(np.float64))) if normalise else (lambda z: z.astype(np.float64))
        x = prep(train)
        centre = x.mean(0)
        basis = np.linalg.svd(x - centre, full_matrices=False)[2][:pca].T if pca else None

        def project(z):
            z = prep(z) - centre
            return z @ basis if basis is not None else z

        xp = project(train)
        classes = np.unique(labels)
        means = np.stack([xp[labels == c].mean(0) for c in classes])
        residuals = xp - means[np.searchsorted(classes, labels)]
        precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(residuals).covariance_)

        def score(z):
            d = project(z)[:, None, :] - means[None]
            return np.sqrt(np.einsum("ncd,de,nce->nc", d, precision, d).min(1))
        return score
    return fit


METHODS = {**{f"knn k={k}": knn(k) for k in KNN_K}, **{n: mahalanobis(*a) for n, a in MAHALANOBIS.items()}}


def prepare(dataset: str, work: Path, seed: int) -> dict:
    """Sample, `head` run, export; the features of every split from the exported classifier."""
    from zoo.data.folder import load_image_folder
    from zoo.data.samples import write_sample
    from zoo.edge import EdgeModel
    from zoo.export.onnx_export import export_run
    from zoo.training.finetune import finetune

    name, limit = DATASETS[dataset]
    data = work / dataset
    write_sample(name, data, seed=seed, limit=limit)
    t0 = time.perf_counter()
    metrics = finetune(data, model="efficientnet_lite0", strategy="head", seed=seed, test_fraction=0.2,
                       out=work / f"{dataset}-run", cache_dir=work / "cache")
    report = export_run(work / f"{dataset}-run", work / f"{dataset}-export")
    seconds = time.perf_counter() - t0
    split = load_image_folder(data, seed=seed, test_fraction=0.2)
    edge = EdgeModel(work / f"{dataset}-export")
    out = {"dataset": dataset, "accuracy": metrics["accuracy"], "seconds": seconds, "ood": report["ood"],
           "export": work / f"{dataset}-export"}
    for part in ("train", "val", "test"):
        samples = getattr(split, part)
        out[part] = np.stack([edge.run(edge_input(edge, s.path))["features"][0] for s in samples])
        out[f"{part}_labels"] = np.array([s.label for s in samples])
    print(f"[{dataset}] head val accuracy {100 * metrics['accuracy']:.1f}%, {len(split.train)} train / "
          f"{len(split.val)} val / {len(split.test)} test images, k={report['ood']['k']}, {seconds:.0f} s", flush=True)
    return out


def edge_input(edge, path: Path) -> np.ndarray:
    from zoo.preprocess import preprocess

    return preprocess(path, edge.preprocess)[None]


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def measure_pair(inside: dict, outside: dict) -> dict:
    from zoo.inference import OOD_FILE, OodScorer

    row: dict = {"pair": f"{inside['dataset']} -> {outside['dataset']}", "methods": {}}
    for name, fit in METHODS.items():
        score = fit(inside["train"], inside["train_labels"])
        row["methods"][name] = auroc(score(inside["val"]), score(outside["val"]))
    shipped = OodScorer.load(inside["export"] / OOD_FILE)
    val, test, out = (shipped.score(x) for x in (inside["val"], inside["test"], outside["val"]))
    limit = shipped.threshold("fp32")
    row["shipped"] = {"k": shipped.k, "auroc": auroc(val, out), "threshold": limit,
                      "val_false_alarms": float((val > limit).mean()),
                      "test_false_alarms": float((test > limit).mean()), "outside_flagged": float((out > limit).mean()),
                      "val_images": len(val), "test_images": len(test), "outside_images": len(out)}
    return row


def print_tables(rows: list[dict]) -> None:
    names = list(METHODS)
    print("\nAUROC (outside = positive; in = the in set's val split, out = the out set's val split)\n")
    print("| pair | " + " | ".join(names) + " | shipped (ood.npz) |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for r in rows:
        best = max(r["methods"].values())
        cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in r["methods"].values()]
        print(f"| {r['pair']} | " + " | ".join(cells) + f" | {r['shipped']['auroc']:.4f} (k={r['shipped']['k']}) |")
    means = {n: np.mean([r["methods"][n] for r in rows]) for n in names}
    lows = {n: min(r["methods"][n] for r in rows) for n in names}
    print("| mean | " + " | ".join(f"{means[n]:.4f}" for n in names) + " | |")
    print("| worst | " + " | ".join(f"{lows[n]:.4f}" for n in names) + " | |")
    print("\nThe shipped score at its threshold (95th percentile of val scores)\n")
    print("| pair | threshold | false alarms on val | false alarms on test (held out) | outside images flagged |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["shipped"]
        print(f"| {r['pair']} | {s['threshold']:.4f} | {s['val_false_alarms']:.1%} of {s['val_images']} | "
              f"{s['test_false_alarms']:.1%} of {s['test_images']} | {s['outside_flagged']:.1%} of "
              f"{s['outside_images']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="in:out dataset names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    from zoo.log import configure

    configure()
    pairs = [tuple(p.split(":")) for p in args.pairs]
    needed = list(dict.fromkeys(d for p in pairs for d in p))
    with tempfile.TemporaryDirectory(prefix="zoo-ood-") as tmp:
        work = args.out or Path(tmp)
        prepared = {d: prepare(d, work, args.seed) for d in needed}
        rows = [measure_pair(prepared[a], prepared[b]) for a, b in pairs]
    print_tables(rows)
    if args.json:
        runs = {d: {"accuracy": p["accuracy"], "seconds": p["seconds"], "ood": p["ood"]} for d, p in prepared.items()}
        args.json.write_text(json.dumps({"backbone": "efficientnet_lite0", "strategy": "head", "seed": args.seed,
                                         "runs": runs, "pairs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
