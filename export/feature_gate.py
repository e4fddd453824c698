"""The gate of a quantized features.onnx: the run's own classifier applied to its vectors.

Why this figure: the features graph exists to feed a classifier (the run's head, or a user's SVM,
kNN or logistic regression trained on fp32 vectors), so what matters is whether decisions made on
the variant's vectors still come out right. Top-1 of the run's classifier on them, against the
same classifier on the fp32 vectors, measures exactly that, in the same points on the same val
images as the classifier's own gate, so one --max-accuracy-drop means one thing for both graphs.
Cosine similarity is recorded beside it (mean and worst image) because distance-based heads (kNN)
read the vectors' directions; it is a figure, not the gate, since no cosine threshold says how
many decisions change.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zoo.run_dir import TrainedRun


def _vectors(path: Path, samples: Sequence) -> tuple[np.ndarray, list[int]]:
    """Features of the readable samples (one image at a time, as served) and their labels."""
    from zoo.edge import EdgeModel

    edge = EdgeModel(path, kind="features")
    results = edge.features([s.path for s in samples])
    kept = [(r.features, s.label) for r, s in zip(results, samples, strict=True) if r.ok]
    return np.stack([np.asarray(f, np.float32) for f, _ in kept]), [y for _, y in kept]


@torch.no_grad()
def _head_accuracy(run: TrainedRun, vectors: np.ndarray, labels: list[int]) -> float:
    logits = run.model.eval().forward_head(torch.from_numpy(vectors))
    return float((logits.argmax(1).numpy() == np.asarray(labels)).mean())


def features_agreement(fp32_path: Path, variant_path: Path, run: TrainedRun, val: Sequence) -> dict:
    """The gate's figures: the run's classifier on fp32 and on variant features, and their cosine similarity."""
    reference, labels = _vectors(fp32_path, val)
    variant, _ = _vectors(variant_path, val)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(variant, axis=1)
    cosine = (reference * variant).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"gate": "val top-1 of the run's classifier applied to these features, against the same classifier on "
                    "features.onnx",
            "fp32_val_accuracy": _head_accuracy(run, reference, labels),
            "val_accuracy": _head_accuracy(run, variant, labels),
            "cosine_mean": round(float(cosine.mean()), 6), "cosine_min": round(float(cosine.min()), 6)}
