"""Experiment tracking: TensorBoard event files in every run directory, and MLflow on request.

`--log tensorboard` (the default) writes RUN/tensorboard/: per-epoch scalars (losses, accuracies,
macro-F1, both learning rates, seconds), the confusion matrix as an image, and the hparams with the
final metrics. `--log mlflow` adds an MLflow run (params, the same per-epoch metrics, the final
metrics and the run's files as artifacts) wherever MLFLOW_TRACKING_URI points (else MLflow's
default); `--log none` writes neither. Only rank 0 of a distributed run tracks.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import UsageError, ZooError
from zoo.log import get_logger

log = get_logger(__name__)
LOG_MODES = ("tensorboard", "mlflow", "none")
TENSORBOARD_DIR = "tensorboard"
# history row -> TensorBoard tag
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
           "val_accuracy": "accuracy/val", "val_macro_f1": "macro_f1/val", "lr": "learning_rate/classifier",
           "backbone_lr": "learning_rate/backbone", "seconds": "time/epoch_seconds"}
# config.json keys recorded as hyperparameters
HPARAMS = ("model", "strategy", "requested_strategy", "freeze_until", "layer", "epochs", "lr", "backbone_lr",
           "batch_size", "augment", "augment_views", "balance", "seed", "val_fraction", "test_fraction", "patience",
           "weight_decay", "pretrained")


def check_log_mode(mode: str) -> None:
    """Before anything is written: a known mode, and MLflow installed when it is asked for."""
    if mode not in LOG_MODES:
        raise UsageError(f"Unknown --log {mode!r}: choose one of {', '.join(LOG_MODES)}.")
    if mode == "mlflow":
        try:
            import mlflow  # noqa: F401  (imported, not just found: a broken install fails here, not mid-run)
        except ImportError:
            raise ZooError("--log mlflow needs MLflow, which is not installed: run `pip install mlflow`, or drop "
                           "--log mlflow (TensorBoard files are written either way).") from None
    if mode != "none" and importlib.util.find_spec("tensorboard") is None:
        raise ZooError("TensorBoard logging needs the tensorboard package: run `pip install tensorboard`, "
                       "or pass --log none.")


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration's hyperparameters as the plain values TensorBoard and MLflow take."""
    out = {}
    for key in HPARAMS:
        value = config.get(key)
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    out["input_size"] = config["preprocess"]["input_size"]
    return out


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {"val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"], "val_loss": metrics["loss"],
           "val_ece": metrics["calibration"]["ece"], "best_epoch": float(metrics["best_epoch"])}
    if metrics.get("test"):
        out.update(test_accuracy=metrics["test"]["accuracy"], test_macro_f1=metrics["test"]["macro_f1"],
                   test_ece=metrics["test"]["calibration"]["ece"])
    return out


class Tracker:
    """Receives each epoch's history row and the finished run; writes to the sinks `mode` names."""

    def __init__(self, run_dir: Path, mode: str):
        self.run_dir, self.mode = Path(run_dir), mode
        self.writer: Any = None
        self.mlflow: Any = None
        if mode != "none":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        if mode == "mlflow":
            import mlflow

            try:
                mlflow.start_run(run_name=self.run_dir.name)
            except Exception as e:  # MLflow raises its own types for a store it cannot use
                raise ZooError(f"MLflow could not start a run at {mlflow.get_tracking_uri()} ({str(e)[:200]}): set "
                               "MLFLOW_TRACKING_URI to a store you can write to, or drop --log mlflow.") from None
            self.mlflow = mlflow

    def epoch(self, row: dict[str, Any]) -> None:
        values = {tag: float(row[key]) for key, tag in SCALARS.items() if key in row}
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, row["epoch"])
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({tag.replace("/", "_"): v for tag, v in values.items()}, step=row["epoch"])

    def finish(self, config: dict[str, Any], metrics: dict[str, Any], confusion_png: Path) -> None:
        """The confusion matrix image, the hparams with the final metrics, and (MLflow) the run's files."""
        final = final_metrics(metrics)
        if self.writer is not None:
            from PIL import Image

            image = np.asarray(Image.open(confusion_png).convert("RGB"))
            self.writer.add_image("confusion_matrix/val", image, metrics["best_epoch"], dataformats="HWC")
            self.writer.add_hparams(hparams(config), {f"final/{k}": v for k, v in final.items()}, run_name="hparams")
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.log_params(hparams(config))
            self.mlflow.log_metrics(final)
            for name in ("metrics.json", "config.json", "confusion.png", "curves.png", "model_card.md"):
                if (self.run_dir / name).is_file():
                    self.mlflow.log_artifact(str(self.run_dir / name))
            self.mlflow.end_run()

    def close(self) -> None:
        """After a failure: flush what was written, end the MLflow run as failed."""
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None and self.mlflow.active_run() is not None:
            self.mlflow.end_run(status="FAILED")
