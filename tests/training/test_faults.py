"""Fault injection in `zoo finetune`: a full disk, a read-only folder, a diverging learning rate, a damaged
checkpoint and a damaged feature cache. Each ends in one sentence or a correct recovery; nothing the
user had is lost, and a run directory never looks finished when it is not.

The disk faults are injected at the operating-system boundary (os.open, os.mkdir, os.fsync), where a
real full or read-only file system refuses: everything above it, zoo's code, safetensors and torch,
runs as it would. Training is real (EfficientNet-Lite0 on the tiny textures set).
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import zoo.training.fit as fitting
from zoo.cli import app
from zoo.run_dir import COMPLETE, is_complete
from zoo.training.checkpoint import CHECKPOINT
from zoo.training.finetune import finetune

HEAD = ["--strategy", "head", "--epochs", "2", "--no-augment"]
REPO = Path(__file__).resolve().parents[2]


def _one_sentence(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip() and "Error" in ln]
    assert len(lines) == 1, result.output
    return lines[0]


def inject_os_error(monkeypatch, code: int, where: str) -> list[str]:
    """Make every open-for-write, mkdir and fsync of a path containing `where` fail with errno `code`,
    as a full (ENOSPC) or read-only (EROFS) file system does. Returns the refused paths."""
    refused: list[str] = []
    real_open, real_mkdir, real_fsync = os.open, os.mkdir, os.fsync

    def refuse(path) -> None:
        refused.append(str(path))
        raise OSError(code, os.strerror(code), str(path))

    def fake_open(path, flags, *args, **kwargs):
        if where in str(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if where in str(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_fsync(fd):  # where delayed allocation reports a full disk
        name = os.readlink(f"/proc/self/fd/{fd}")
        if where in name:
            refuse(name)
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    return refused


def test_lr_inf_is_refused_before_anything_is_written(runner, tiny_textures, tmp_path):
    """Before: accepted, nan loss, a 33% run directory and exit code 0."""
    for rate in ("inf", "nan", "-1"):
        out = tmp_path / f"run-{rate}"
        result = runner.invoke(app, ["finetune", str(tiny_textures), *HEAD, "--lr", rate, "--out", str(out)])
        assert "finite number greater than 0" in _one_sentence(result, 2)
        assert not out.exists()


def test_a_diverging_run_stops_with_one_sentence_and_exit_1(runner, tiny_textures, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(tiny_textures), *HEAD, "--lr", "1e30", "--out", str(out)])
    assert "Training diverged" in _one_sentence(result, 1)
    assert not is_complete(out) and not (out / "model.safetensors").exists()


def test_full_disk_while_writing_the_weights(runner, tiny_textures, tmp_path, monkeypatch):
    """Before: a traceback, and a run directory with metrics, plots and model card that looked finished."""
    out = tmp_path / "run"
    refused = inject_os_error(monkeypatch, errno.ENOSPC, "model.safetensors")
    result = runner.invoke(app, ["finetune", str(tiny_textures), *HEAD, "--out", str(out)])
    line = _one_sentence(result, 1)
    assert refused and "Could not write" in line and "No space left on device" in line
    monkeypatch.undo()
    assert not is_complete(out) and not (out / "model.safetensors").exists()
    assert (out / CHECKPOINT).is_file(), "the finished epochs are kept"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary file is left"
    export = runner.invoke(app, ["export", str(out), "--no-archive"])
    assert "did not finish" in _one_sentence(export, 1)
    assert not (out / "export").exists()
    resumed = runner.invoke(app, ["finetune", str(tiny_textures), *HEAD, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output  # recovery: the same command with --resume finishes it
    assert is_complete(out) and not (out / CHECKPOINT).exists()


@pytest.mark.slow
def test_a_real_file_size_limit_reaches_the_rust_writer(tiny_textures, tmp_path):
    """No injection: the kernel refuses every write past 8 MB (RLIMIT_FSIZE, EFBIG), so the 18-MB weights
    fail inside safetensors' Rust writer, the path a real full disk takes (it reports "(os error 28)")."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "finetune", str(tiny_textures), *HEAD, "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, env=env, preexec_fn=limit_file_size,
                            timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Could not write" in result.stderr and "File too large" in \
        result.stderr, result.stderr[-2000:]
    assert not is_complete(out) and not (out / "model.safetensors").exists() and (out / CHECKPOINT).is_file()


def test_full_disk_mid_training_keeps_the_last_checkpoint(tiny_textures, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = fitting.save_checkpoint

    def fill_disk_after_first(run_dir, state):
        if state["epoch"] == 2:
            inject_os_error(monkeypatch, errno.ENOSPC, CHECKPOINT)
        real_save(run_dir, state)

    monkeypatch.setattr(fitting, "save_checkpoint", fill_disk_after_first)
    from zoo.errors import WorkFailed

    with pytest.raises(WorkFailed, match="Could not write .*checkpoint.pt"):
        finetune(tiny_textures, strategy="head", epochs=3, augment=False, out=out)
    monkeypatch.undo()
    assert fitting.load_checkpoint(out)["epoch"] == 1 and not is_complete(out)


def test_read_only_out_is_one_sentence(runner, tiny_textures, tmp_path, monkeypatch):
    out = tmp_path / "read-only" / "run"
    inject_os_error(monkeypatch, errno.EROFS, str(tmp_path / "read-only"))
    result = runner.invoke(app, ["finetune", str(tiny_textures), *HEAD, "--out", str(out)])
    line = _one_sentence(result, 2)
    assert "Cannot write" in line and "Read-only file system" in line


def _interrupted_head_run(data: Path, out: Path, monkeypatch, after_epoch: int) -> None:
    real_save = fitting.save_checkpoint

    def save_then_stop(run_dir, state):
        if state["epoch"] > after_epoch:
            raise KeyboardInterrupt
        real_save(run_dir, state)

    monkeypatch.setattr(fitting, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune(data, strategy="head", epochs=3, augment=False, out=out)
    monkeypatch.setattr(fitting, "save_checkpoint", real_save)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_one_sentence_and_kept(runner, tiny_textures, tmp_path, monkeypatch, damage):
    out = tmp_path / "run"
    _interrupted_head_run(tiny_textures, out, monkeypatch, after_epoch=1)
    path = out / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # same length, one byte changed: only the checksum can tell
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["finetune", str(tiny_textures), "--strategy", "head", "--epochs", "3",
                                 "--no-augment", "--out", str(out), "--resume"])
    assert f"{CHECKPOINT} is damaged" in _one_sentence(result, 1)
    assert path.read_bytes() == bytes(data), "the user's file is left as it was"


def test_resume_before_the_first_checkpoint_says_it_starts_over(tiny_textures, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted_head_run(tiny_textures, out, monkeypatch, after_epoch=0)
    assert not (out / CHECKPOINT).exists()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(fitting.__name__).addHandler(handler)
    try:
        finetune(tiny_textures, strategy="head", epochs=3, augment=False, out=out, resume=True)
    finally:
        logging.getLogger(fitting.__name__).removeHandler(handler)
    assert any("holds no checkpoint" in r and "starting from epoch 1" in r for r in records), records
    assert is_complete(out) and (out / COMPLETE).is_file()


def test_a_cache_entry_with_overwritten_data_is_recomputed(tiny_textures, tmp_path):
    """Header intact, data region overwritten: before, a head run trained on the garbage (33%, exit 0)."""
    cache = tmp_path / "cache"
    first = finetune(tiny_textures, strategy="head", epochs=3, augment=False, out=tmp_path / "a", cache_dir=cache)
    entries = sorted(cache.rglob("*.safetensors"))
    for entry in entries:
        raw = bytearray(entry.read_bytes())
        header = 8 + int.from_bytes(raw[:8], "little")
        raw[header:] = os.urandom(len(raw) - header)
        entry.write_bytes(bytes(raw))
    again = finetune(tiny_textures, strategy="head", epochs=3, augment=False, out=tmp_path / "b", cache_dir=cache)
    assert again["feature_cache"]["computed"] == len(entries) == 2
    assert again["confusion_matrix"] == first["confusion_matrix"] and again["loss"] == pytest.approx(first["loss"])
