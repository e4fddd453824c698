"""confusion.png and curves.png of a run (matplotlib, no display needed)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zoo.atomic import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    """Colour is the row-normalised rate (recall on the diagonal); numbers are counts."""
    cm = np.asarray(matrix)
    n = len(classes)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(3 + 0.55 * n, 24)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
        ax.set_yticks(range(n), classes)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                            color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    style = {"marker": "o", "markersize": 3} if len(epochs) < 40 else {}
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train", **style)
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="val", **style)
    loss_ax.set_ylabel("cross-entropy loss")
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], label="train", **style)
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], label="val", **style)
    acc_ax.plot(epochs, [h["val_macro_f1"] for h in history], label="val macro-F1", linestyle="--", **style)
    acc_ax.set_ylabel("accuracy, macro-F1")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.legend(loc="best")  # the spot that hides the fewest points
    loss_ax.legend(loc="best")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(epochs) < 15:
            ax.set_xticks(epochs)
    fig.suptitle(title)
    _save(fig, path)


def plot_reliability(calibration: dict, path: Path, title: str) -> None:
    """Accuracy against confidence per bin (zoo.metrics.calibration); the diagonal is perfect calibration."""
    edges = np.asarray(calibration["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    acc = np.array([a if a is not None else 0.0 for a in calibration["accuracy"]])
    counts = np.asarray(calibration["counts"])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.bar(centres, acc, width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy in the bin")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nexpected calibration error {calibration['ece']:.3f}")
    ax.legend(loc="upper left")
    hist.bar(centres, counts, width=width * 0.95, color="tab:grey")
    hist.set_xlabel("confidence of the top label")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    _save(fig, path)
