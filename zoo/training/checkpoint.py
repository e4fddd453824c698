"""The per-epoch checkpoint that makes Ctrl-C or a kill resumable.

It holds only what training changes (the trainable part of the model, the optimizer state and the
history) as plain tensors and containers, so `torch.load(weights_only=True)` reads it without
unpickling code. It is written atomically: a kill leaves the previous epoch's file intact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def remove_checkpoint(run_dir: Path) -> None:
    (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)
