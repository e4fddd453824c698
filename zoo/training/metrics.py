"""Classification metrics from logits: accuracy, top-k, per-class precision/recall/F1, confusion matrix."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def top_k_accuracy(logits: torch.Tensor, y_true: torch.Tensor, k: int) -> float:
    top = logits.topk(k, dim=1).indices
    return float((top == y_true[:, None]).any(dim=1).float().mean())


def classification_report(logits: torch.Tensor, y_true: torch.Tensor, classes: list[str]) -> dict:
    y = y_true.numpy()
    pred = logits.argmax(1).numpy()
    cm = confusion_matrix(y, pred, len(classes))
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / cm.sum(0))  # a class never predicted has precision 0
        recall = np.nan_to_num(tp / cm.sum(1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    k = max(1, min(5, len(classes) - 1))  # top-k with k = number of classes is always 1.0
    present = cm.sum(1) > 0  # classes with no validation image say nothing about recall
    return {
        "accuracy": float((pred == y).mean()),
        "top_k": {"k": k, "accuracy": top_k_accuracy(logits, y_true, k)},
        "loss": float(F.cross_entropy(logits, y_true)),
        "macro_f1": float(f1[present].mean()),
        "min_recall": float(recall[present].min()),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(cm[i].sum())} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
