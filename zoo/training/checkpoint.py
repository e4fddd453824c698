"""The per-epoch checkpoint that makes Ctrl-C or a kill resumable.

It holds only what training changes (the trainable part of the model, the optimizer state and the
history) as plain tensors and containers, so `torch.load(weights_only=True)` reads it without
unpickling code. It is written atomically: a kill leaves the previous epoch's file intact. The file
starts with a magic line and the SHA-256 of the data after it, checked on every read, so a
truncated or damaged checkpoint is one clear sentence, never a traceback or silently wrong weights.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_bytes
from zoo.errors import ZooError

CHECKPOINT = "checkpoint.pt"
MAGIC = b"zoo-checkpoint-1\n"
DIGEST_BYTES = 64  # hex SHA-256 of what follows


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, MAGIC + hashlib.sha256(data).hexdigest().encode() + data)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    damaged = (f"{path} is damaged ({{}}): delete it to restart the run from its first epoch, or pass --force "
               "to start over.")
    blob = path.read_bytes()
    head, digest, data = blob[:len(MAGIC)], blob[len(MAGIC):len(MAGIC) + DIGEST_BYTES], blob[len(MAGIC) + DIGEST_BYTES:]
    if head != MAGIC:
        raise ZooError(damaged.format("it is not a zoo checkpoint, or was cut short"))
    if hashlib.sha256(data).hexdigest().encode() != digest:
        raise ZooError(damaged.format(f"its {len(data)} bytes of data fail the checksum written with them"))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # checksum-valid data torch cannot read: a different torch, or a bug
        raise ZooError(damaged.format(f"torch cannot read it: {type(e).__name__}")) from None


def remove_checkpoint(run_dir: Path) -> None:
    (Path(run_dir) / CHECKPOINT).unlink(missing_ok=True)
