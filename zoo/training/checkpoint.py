"""The per-epoch checkpoint that makes Ctrl-C or a kill resumable.

It holds only what training changes (the trainable part of the model, the optimizer state and the
history) as plain tensors and containers, so `torch.load(weights_only=True)` reads it without
unpickling code. It is written atomically: a kill leaves the previous epoch's file intact.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict) -> None:
    path = Path(run_dir) / CHECKPOINT
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=run_dir)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_checkpoint(run_dir: Path) -> None:
    (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)
