"""`--image-size N|auto`: the resolution a run trains and serves at.

The pretrained weights were made at the backbone's native size (224 for efficientnet_lite0), and
`auto` keeps it for images that are at least that large. Smaller images are not blown up all the
way: a 28-px digit at 224 px costs 64 times its pixels. `auto` takes the median shorter side of the
training images, rounds it up to a multiple of 32 (the backbones reduce by 32, so the last feature
map stays whole) and keeps at least a floor, because a pretrained network's filters need an object
a few dozen pixels wide. The floor depends on what learns, and is measured, not assumed
(benchmarks/image_size.py, val accuracy against 224 px):
- a frozen backbone (head, svm): 128. No set of six lost more than one val image at 128 px, two
  gained; at 96 px emoji lost 6 points, at 64 px five sets lost 4 to 15.
- a backbone that learns (full, partial): 192. Fine-tuning on 28-px digits lost 5 to 6 points at 128
  px and 1 at 160, and gained 2 at 192.
Global average pooling makes any size work; preprocess.json carries the choice to export, serving
and the edge.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

from zoo.errors import ZooError
from zoo.preprocess import PreprocessConfig

SIZE_STEP = 32  # the backbones' total stride
FEATURES_FLOOR = 128  # the smallest size `auto` picks for a frozen backbone (see the module docstring)
FINETUNE_FLOOR = 192  # ... and for one that learns
MIN_SIZE, MAX_SIZE = 32, 1024  # what an explicit --image-size may ask for


def parse_image_size(value: str | int) -> int | None:
    """None for "auto", else the explicit size, checked; a bad value is one sentence."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ZooError(f"--image-size must be auto or a whole number of pixels, not {value!r}: "
                       "give e.g. 224.") from None
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ZooError(f"--image-size {size} is outside {MIN_SIZE}-{MAX_SIZE} pixels: give a size in that range, "
                       "or auto.")
    return size


def auto_size(shorter_sides: Sequence[int], native: int, trains_backbone: bool = False) -> tuple[int, str]:
    """The size `auto` picks for images whose shorter sides (as stored) are given, and why."""
    if not shorter_sides:
        return native, f"no images to measure: the backbone's native {native} px"
    median = statistics.median(shorter_sides)
    if median >= native:
        return native, f"the median shorter side is {median:g} px, at least the backbone's native {native} px"
    floor = FINETUNE_FLOOR if trains_backbone else FEATURES_FLOOR
    size = min(native, max(floor, SIZE_STEP * math.ceil(median / SIZE_STEP)))
    what = "a backbone that learns" if trains_backbone else "a frozen backbone"
    return size, (f"the median shorter side is {median:g} px: {size} px (a multiple of {SIZE_STEP}, at least "
                  f"{floor} for {what}) instead of blowing the images up to the backbone's native {native} px")


def choose_preprocess(native: PreprocessConfig, requested: str | int, shorter_sides: Sequence[int],
                      trains_backbone: bool = False) -> tuple[PreprocessConfig, dict[str, object]]:
    """The run's preprocessing at the chosen size, and what config.json records about the choice."""
    size = parse_image_size(requested)
    if size is None:
        size, reason = auto_size(shorter_sides, native.input_size, trains_backbone)
    else:
        reason = f"--image-size {size}"
    cfg = native if size == native.input_size else replace(native, input_size=size, max_size=0)
    return cfg, {"requested": str(requested), "size": size, "native": native.input_size, "reason": reason}
