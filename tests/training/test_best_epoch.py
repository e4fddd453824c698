"""--patience stops a run; the best epoch's weights are what the run holds and exports; resume keeps it.

The data (120 MNIST digits, 20 val) and a high classifier rate make val accuracy rise and then fall back,
so the run stops early and its last epoch is not its best.
"""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import zoo.training.fit as fitting
from zoo.data.samples import write_sample
from zoo.evaluate.evaluate import evaluate
from zoo.export.onnx_export import export_run
from zoo.training.finetune import finetune

OPTIONS = dict(strategy="head", epochs=12, patience=2, batch_size=16, lr=0.05, seed=0, log="none")


@pytest.fixture(scope="module")
def digits120(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "digits120"
    write_sample("digits", out, seed=0, limit=120)
    return out


@pytest.fixture(scope="module")
def stopped(digits120, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stopped"
    return out, finetune(digits120, out=out, **OPTIONS)


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_patience_stops_the_run_and_the_export_scores_the_recorded_best_epoch(digits120, stopped):
    out, metrics = stopped
    history = _history(out)
    best = metrics["best_epoch"]
    assert metrics["stopped_early"] and len(history) == metrics["epochs_run"] < OPTIONS["epochs"]
    assert best == len(history) - OPTIONS["patience"]  # the last `patience` epochs did not improve on it
    row, last = history[best - 1], history[-1]
    assert metrics["accuracy"] == row["val_accuracy"] and metrics["loss"] == pytest.approx(row["val_loss"])
    assert last["val_accuracy"] < row["val_accuracy"], "the last epoch should be worse than the best one"
    assert json.loads((out / "config.json").read_text())["patience"] == OPTIONS["patience"]
    assert f"epoch {best} of {len(history)}" in (out / "model_card.md").read_text()

    export_run(out, out / "export")
    scored = evaluate(str(out / "export"), digits120, split="val", write=False)["metrics"]
    assert scored["accuracy"] == row["val_accuracy"]
    assert scored["loss"] == pytest.approx(row["val_loss"], abs=1e-4)


def test_resume_after_the_best_epoch_ends_with_the_same_weights(digits120, stopped, tmp_path, monkeypatch):
    out_a, metrics_a = stopped
    out = tmp_path / "run"
    real_save = fitting.save_checkpoint
    interrupt_at = metrics_a["best_epoch"] + 1  # the best is in the checkpoint, no longer in the model

    def save_then_ctrl_c(run_dir, state):
        real_save(run_dir, state)
        if state["epoch"] == interrupt_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(fitting, "save_checkpoint", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        finetune(digits120, out=out, **OPTIONS)
    monkeypatch.setattr(fitting, "save_checkpoint", real_save)
    metrics = finetune(digits120, out=out, resume=True, **OPTIONS)
    assert (metrics["best_epoch"], metrics["epochs_run"]) == (metrics_a["best_epoch"], metrics_a["epochs_run"])
    a, b = load_file(str(out_a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
