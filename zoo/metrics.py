"""Classification metrics from class probabilities: the one definition training and `zoo evaluate` share.

scikit-learn computes them (accuracy, top-k, per-class precision/recall/F1, the confusion matrix and
the log loss); this module only fixes the conventions: rows of the confusion matrix are true
classes, a class never predicted has precision 0, and classes without an image say nothing about
recall. Calibration is the top-label expected calibration error over equal-width confidence bins.
No torch: an export or a served model is scored with numpy alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CALIBRATION_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities in float64 from logits [N, C]."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_k_for(num_classes: int) -> int:
    """k for the top-k figure: at most 5, and below the number of classes (top-C is always 1.0)."""
    return max(1, min(5, num_classes - 1))


def calibration(probabilities: np.ndarray, y_true: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error of the top label, and the per-bin figures a reliability diagram draws.

    Bin b holds the confidences in (b/bins, (b+1)/bins]; ECE = sum over bins of
    (images in the bin / all images) * |accuracy in the bin - mean confidence in the bin|.
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / len(y_true) * np.abs(accuracy[filled] - mean_conf[filled])))
    return {"ece": ece, "bins": bins, "edges": edges.tolist(), "counts": counts.tolist(),
            "accuracy": [float(a) if f else None for a, f in zip(accuracy, filled, strict=True)],
            "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)]}


def classification_report(probabilities: np.ndarray, y_true: Sequence[int] | np.ndarray,
                          classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, top-k, log loss, macro-F1, lowest recall, per-class figures, confusion matrix, calibration."""
    from sklearn import metrics

    probs = np.asarray(probabilities, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # fp16 graphs and JSON answers sum to 1 only roughly
    y = np.asarray(y_true, dtype=np.int64)
    labels = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    cm = metrics.confusion_matrix(y, pred, labels=labels)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(y, pred, labels=labels,
                                                                             zero_division=0)
    present = support > 0  # classes with no image here say nothing about recall
    k = top_k_for(len(classes))
    # Ties go to the lower label, as zoo.inference.top_k ranks them for served and edge answers.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return {
        "accuracy": float(metrics.accuracy_score(y, pred)),
        "top_k": {"k": k, "accuracy": float((top == y[:, None]).any(axis=1).mean())},
        "loss": float(metrics.log_loss(y, probs, labels=labels)),
        "macro_f1": float(f1[present].mean()),
        "min_recall": float(recall[present].min()),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "calibration": calibration(probs, y),
    }
