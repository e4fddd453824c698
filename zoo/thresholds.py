"""The dataset thresholds that the advisor and `zoo finetune` share: one constant each.

The advisor calls a dataset small or skewed with these, and finetune's defaults (augmentation on
for small data, `--balance auto` weighting the loss for skewed data) follow the same lines, so the
advice and the run never disagree about what they are looking at.
"""
from __future__ import annotations

# At or below this many training images a dataset is "small": augmentation is on by default, and
# the advisor's quadrant rule looks at Q3/Q4. `zoo advise --size-threshold` moves it for one call.
SIZE_THRESHOLD = 1000

# A class count ratio (largest / smallest) at or above this is "skewed": `--balance auto` weights
# the loss and the advisor says so.
IMBALANCE_THRESHOLD = 2.0


def is_small(training_images: int, threshold: int = SIZE_THRESHOLD) -> bool:
    return training_images <= threshold


def is_skewed(class_counts: list[int]) -> bool:
    return bool(class_counts) and max(class_counts) >= IMBALANCE_THRESHOLD * max(min(class_counts), 1)
