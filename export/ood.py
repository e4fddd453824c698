"""The out-of-distribution summary `zoo export` writes: ood.npz, read by zoo.inference.OodScorer.

It holds the L2-normalised bottleneck features of the run's training images (at most MAX_BANK, taken
round-robin over the classes, stored as float16), k, and one threshold per classifier variant: the
95th percentile of the val split's scores computed with that variant's own features, so about 5%
of val images are flagged by construction. A run whose val split is empty is calibrated on the
training images instead, each scored against the other folds of a 5-fold split (never against a
bank that holds it); the report says which. The score itself lives in zoo/inference.py, once.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.atomic import atomic_write
from zoo.data.folder import ImageFolderData, Sample
from zoo.deployment import FP32, variant_file
from zoo.errors import ZooError
from zoo.export.run_images import spread
from zoo.inference import CPU, OOD_FILE, OodScorer, open_session
from zoo.log import get_logger
from zoo.preprocess import ImageError, PreprocessConfig, preprocess
from zoo.run_dir import TrainedRun

log = get_logger(__name__)

K = 20  # the k-th nearest training feature; benchmarks/ood.py measured k = 1 to 50 (README)
MAX_BANK = 2000  # training features kept: 2000 x D float16 (5 MB for lite0's 1280) in each archive
PERCENTILE = 95.0  # of in-distribution scores: the threshold, so about 5% of val is flagged
FOLDS = 5  # held-out folds of train when there is no val split
RESERVED = "ood"  # the answer's key: a class of that name would collide with it
METHOD = ("kNN on L2-normalised bottleneck features: cosine distance to the k-th nearest training feature "
          "(Sun et al. 2022)")


def choose_k(bank_size: int) -> int:
    """K, or fewer when the bank is small: at most a fifth of it, at least 1."""
    return max(1, min(K, bank_size // 5))


def features_of(graph: Path, samples: Sequence[Sample], cfg: PreprocessConfig) -> tuple[np.ndarray, list[int]]:
    """The `features` output of an ONNX graph for the readable samples, one image at a time as zoo.edge runs
    them: ([N, D] features, the indices of the samples they belong to)."""
    session = open_session(graph, [CPU])
    rows, readable = [], []
    for i, sample in enumerate(samples):
        try:
            x = preprocess(sample.path, cfg)[None]
        except ImageError:
            continue  # unreadable files are skipped, as training skipped them
        rows.append(session.run(["features"], {"image": x})[0][0])
        readable.append(i)
    return (np.stack(rows) if rows else np.zeros((0, 0), np.float32)), readable


def normalised(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def make_scorer(train_features: np.ndarray, thresholds: dict[str, float] | None = None,
                meta: dict | None = None) -> OodScorer:
    """A scorer on the float16 bank exactly as ood.npz stores it, so calibration scores what will be served."""
    bank = normalised(train_features).astype(np.float16)
    return OodScorer(bank, choose_k(len(bank)), thresholds or {FP32: np.inf}, meta)


def threshold(scores: np.ndarray) -> float:
    return float(np.percentile(np.asarray(scores, dtype=np.float64), PERCENTILE))


def held_out_scores(train_features: np.ndarray, labels: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Each training image scored against a bank of the other folds (stratified, in order): for runs without val."""
    fold = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        fold[members] = np.arange(len(members)) % folds
    scores = np.zeros(len(labels))
    for f in range(folds):
        inside = fold == f
        if inside.any() and (~inside).any():
            scores[inside] = make_scorer(train_features[~inside]).score(train_features[inside])
    return scores


def _skip(reason: str) -> dict:
    log.info(f"No OOD summary: {reason}")
    return {"skipped": reason}


def write_summary(run: TrainedRun, data: ImageFolderData | None, staging: Path, report: dict) -> dict:
    """ood.npz in staging from the run's images; returns export_report.json's `ood` entry."""
    if RESERVED in run.labels:
        return _skip(f"a class is named {RESERVED!r}, the key the OOD field takes in every answer; rename the class")
    if data is None or not data.train:
        return _skip("the run's image folder is not known: pass --data to compute the OOD summary")
    log.info(f"Computing the OOD summary from {min(len(data.train), MAX_BANK)} training images")
    kept = spread(data.train, MAX_BANK)
    train, readable = features_of(staging / variant_file("classifier", FP32), kept, run.preprocess)
    if len(train) < 2:
        return _skip("fewer than 2 readable training images")
    scorer = make_scorer(train)
    entry = {"file": OOD_FILE, "method": METHOD, "k": scorer.k, "bank": len(train), "feature_dim": scorer.dim,
             "train_images": len(data.train), "unreadable": len(kept) - len(readable), "percentile": PERCENTILE}
    labels = np.array([kept[i].label for i in readable])
    thresholds, calibration = _calibrate(run, data, staging, report, scorer, train, labels)
    entry.update(thresholds=thresholds, calibration=calibration)
    final = make_scorer(train, thresholds, {"method": METHOD, "percentile": PERCENTILE,
                                            "calibration_split": calibration["split"]})
    atomic_write(staging / OOD_FILE, lambda tmp: save(tmp, final), suffix=".npz")
    entry["bytes"] = (staging / OOD_FILE).stat().st_size
    log.info(f"OOD summary: {entry['bank']} training features, k={entry['k']}, threshold {thresholds[FP32]:.4f} "
             f"(the {PERCENTILE:.0f}th percentile of {calibration['split']} scores)")
    return entry


def save(path: Path, scorer: OodScorer) -> None:
    """ood.npz at `path`: the bank and the metadata, plain arrays only (np.load needs no pickle to read them)."""
    with open(path, "wb") as f:
        arrays = scorer.arrays()
        np.savez(f, bank=arrays["bank"], meta=arrays["meta"])


def _calibrate(run: TrainedRun, data: ImageFolderData, staging: Path, report: dict, scorer: OodScorer,
               train: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], dict]:
    """One threshold per classifier variant made (fp32 always), and how it was calibrated."""
    if not data.val:
        scores = held_out_scores(train, labels)
        return {FP32: threshold(scores)}, {
            "split": f"train ({FOLDS} held-out folds: the run has no val split)", "images": len(scores),
            "note": "each training image is scored against the other folds, a bank a fifth smaller than the one "
                    "served, which tends to raise the threshold: fewer false alarms than 5%, not more"}
    made = [v for v, i in (report.get("variants") or {}).items()
            if i.get("status") == "accepted" and (staging / variant_file("classifier", v)).is_file()]
    thresholds, rates, images = {}, {}, 0
    for variant in [FP32, *made]:
        val, readable = features_of(staging / variant_file("classifier", variant), data.val, run.preprocess)
        if not readable:
            raise ZooError(f"No image of the val split could be read to calibrate the OOD threshold: check "
                           f"{data.root} with `zoo data inspect`.")
        scores, images = scorer.score(val), max(images, len(readable))
        thresholds[variant] = threshold(scores)
        rates[variant] = float((scores > thresholds[variant]).mean())
    return thresholds, {"split": "val", "images": images, "val_false_alarm_rate": rates}
