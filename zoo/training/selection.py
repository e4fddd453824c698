"""Which epoch a run keeps, and when --patience stops it.

The val split chooses: the best epoch has the highest val accuracy, ties going to the lower val loss
and then to the earlier epoch. Everything is read off the history, which every checkpoint holds,
so a resumed run makes the same choice and stops at the same epoch as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SELECTION = "val accuracy (ties: lower val loss, then the earlier epoch)"


def best_index(history: list[dict[str, Any]]) -> int:
    """Index of the best row of the history (0 when it is empty)."""
    return min(range(len(history)), key=lambda i: (-history[i]["val_accuracy"], history[i]["val_loss"], i),
               default=0)


def should_stop(history: list[dict[str, Any]], patience: int | None) -> bool:
    """True when `patience` epochs in a row have passed without a better val figure."""
    return patience is not None and bool(history) and len(history) - 1 - best_index(history) >= patience


@dataclass
class BestEpoch:
    """The best epoch's trainable weights (and val logits, when this process computed them)."""

    epoch: int = 0  # 1-based; 0 before the first epoch
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    val_logits: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any] | None) -> BestEpoch:
        best = (checkpoint or {}).get("best")
        return cls(best["epoch"], best["model"]) if best else cls()

    def update(self, history: list[dict[str, Any]], state: dict[str, torch.Tensor],
               val_logits: torch.Tensor) -> bool:
        """Keep a copy of `state` if the last epoch of `history` is the best so far; True if it is."""
        if best_index(history) != len(history) - 1:
            return False
        self.epoch, self.val_logits = len(history), val_logits
        self.state = {k: v.detach().clone() for k, v in state.items()}
        return True

    def to_checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.state}
