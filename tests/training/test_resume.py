"""An interrupted run, resumed, ends where an uninterrupted one with the same seed ends.

Tolerance: data order, augmentation and dropout depend only on (seed, epoch), and the checkpoint
holds the trainable weights and optimizer state exactly, so on one machine the results are
bit-identical; the tests allow 1e-6 on losses and weights for thread-count effects, and demand
equal accuracy and confusion matrices.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo.training.finetune as engine
import zoo.training.fit as fitting
from zoo.errors import ZooError
from zoo.run_dir import load_run

# partial with most of the network frozen: real backbone training (BatchNorm, optimizer state,
# augmentation) at a cost a CPU test can afford.
OPTIONS = dict(strategy="partial", freeze_until="stage6", epochs=3, augment=True, batch_size=8, seed=7)


@pytest.fixture(scope="module")
def uninterrupted(tiny_textures, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    metrics = engine.finetune(tiny_textures, out=out, **OPTIONS)
    return out, metrics


def _assert_same_result(run_a, run_b):
    (a_dir, a), (b_dir, b) = run_a, run_b
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["accuracy"] == b["accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert a["macro_f1"] == pytest.approx(b["macro_f1"], abs=1e-9)
    wa, wb = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
    assert set(wa) == set(wb)
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), atol=1e-6, rtol=0), key
    rows_a = (a_dir / "history.csv").read_text().splitlines()
    rows_b = (b_dir / "history.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == OPTIONS["epochs"] + 1


def test_ctrl_c_after_the_first_epoch_then_resume(tiny_textures, tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    real_save = fitting.save_checkpoint

    def save_then_ctrl_c(run_dir, state):
        real_save(run_dir, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # what Ctrl-C does right after the first epoch's checkpoint

    monkeypatch.setattr(fitting, "save_checkpoint", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        engine.finetune(tiny_textures, out=out, **OPTIONS)
    monkeypatch.setattr(fitting, "save_checkpoint", real_save)

    assert (out / "checkpoint.pt").is_file() and not (out / "model.safetensors").exists()
    with pytest.raises(ZooError, match="resume it with"):
        load_run(out)
    with pytest.raises(ZooError, match="already exists"):
        engine.finetune(tiny_textures, out=out, **OPTIONS)
    with pytest.raises(ZooError, match="was started with epochs=3"):
        engine.finetune(tiny_textures, out=out, resume=True, **{**OPTIONS, "epochs": 4})

    metrics = engine.finetune(tiny_textures, out=out, resume=True, **OPTIONS)
    _assert_same_result(uninterrupted, (out, metrics))
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_resumable_run(tiny_textures, tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = [str(Path(sys.executable).parent / "zoo"), "finetune", str(tiny_textures), "--out", str(out),
            "--strategy", "partial", "--freeze-until", "stage6", "--epochs", "3", "--augment", "--batch-size", "8",
            "--seed", "7", "--workers", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 600
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the kill follows the first checkpoint closely; a poll costs little
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "killed before finishing"
    assert not (out / "run_complete.json").exists(), "a killed run never looks finished"
    with pytest.raises(ZooError, match="did not finish"):
        load_run(out)
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr  # progress and log lines go to stderr
    _assert_same_result(uninterrupted, (out, json.loads((out / "metrics.json").read_text())))
