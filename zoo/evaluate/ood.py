"""`zoo evaluate --ood-folder OTHER`: how well the OOD score tells the scored split from another folder.

The split's images are in distribution, every image under OTHER is out of it; the figure is the
AUROC of the score (scikit-learn's roc_auc_score), with the false-alarm rate on the split and the
detection rate on OTHER at the threshold the model carries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import UsageError, ZooError
from zoo.evaluate.targets import Answer, Target
from zoo.progress import progress_bar

NO_SUMMARY = ("gives no OOD score (its export holds no ood.npz): export the run again with `zoo export` and its "
              "images, or score the export folder instead of the run directory")


def check_folder(folder: Path, target: Target) -> list[Path]:
    """The images under `folder`, before anything is scored; a target known to lack the score is refused now."""
    from zoo.predict import collect_images

    if not folder.is_dir():
        raise UsageError(f"--ood-folder {folder} is not a folder: give a folder of images the model was not "
                         "trained on.")
    if target.has_ood is False:
        raise UsageError(f"{target.name} {NO_SUMMARY}.")
    return collect_images([folder])


def ood_report(target: Target, inside: list[Answer], folder: Path, paths: list[Path]) -> dict[str, Any]:
    """AUROC of the OOD score between the scored split (`inside`) and the images under `folder`."""
    from sklearn.metrics import roc_auc_score

    in_scores = np.array([a.ood["score"] for a in inside if a.ood is not None])
    if not len(in_scores):
        raise ZooError(f"{target.name} {NO_SUMMARY}.")
    outside = [target.answer(p) for p in progress_bar(paths, "scoring the OOD folder", total=len(paths))]
    out_scores = np.array([a.ood["score"] for a in outside if a.ood is not None])
    if not len(out_scores):
        raise ZooError(f"No image under {folder} could be scored (the first: {outside[0].error}): give a folder "
                       "of readable images.")
    threshold = float(next(a.ood["threshold"] for a in inside if a.ood is not None))
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return {
        "folder": str(folder), "auroc": float(roc_auc_score(truth, np.r_[in_scores, out_scores])),
        "threshold": threshold, "in_images": len(in_scores), "out_images": len(out_scores),
        "out_unreadable": len(outside) - len(out_scores),
        "false_alarm_rate": float((in_scores > threshold).mean()),
        "detection_rate": float((out_scores > threshold).mean()),
        "in_score_median": float(np.median(in_scores)), "out_score_median": float(np.median(out_scores)),
    }
