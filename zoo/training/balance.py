"""Class imbalance: the `--balance` modes and what `auto` resolves to (torch-free: the CLI lists them)."""
from __future__ import annotations

from zoo.thresholds import is_skewed

# auto: weight the loss when the data is skewed; none; sampler: draw classes equally often; loss: weight the loss.
BALANCE_MODES = ("auto", "none", "sampler", "loss")


def resolve_balance(balance: str, class_counts: list[int]) -> str:
    if balance != "auto":
        return balance
    return "loss" if is_skewed(class_counts) else "none"


def class_weights(class_counts: list[int]) -> list[float]:
    """Inverse-frequency weights, 1.0 on average: rare classes count as much as common ones."""
    total = sum(class_counts)
    return [total / (len(class_counts) * n) for n in class_counts]
