"""`--image-size N|auto`: the resolution a run trains and serves at.

The pretrained weights were made at the backbone's native size (224 for efficientnet_lite0). `auto`
keeps it wherever pretrained layers stay frozen (head, svm, partial): those layers read the images at
the scale they learned. A smaller size measured worse there (benchmarks/image_size.py, val accuracy
against 224 px): svm lost 8 points on emoji and 3 on digits at 128 px, and 4 on emoji at 192; partial
at 192 px lost 1.3 and 2.5 points on faces over two seeds (and tied on photos). Where every layer
learns (full), training time grows with the pixels of every epoch, and small images are not blown up
all the way: `auto` takes the median shorter side of the training images, rounded up to a multiple of
32 (the backbones reduce by 32, so the last feature map stays whole), and at least FINETUNE_FLOOR.
`full` at 192 px against 224, mean val accuracy over seeds (benchmarks/image_size.py): photos (73 px)
+2.0 points, faces (92 px) +0.6, emoji (72 px) 0.0, at about 0.7x the time per run.
Tiny images are the exception: below TINY_SIDE, `full` trains at the native size. At 24-28 px, 192
against 224 px over three seeds each lost 4.4 points on photo crops shrunk to 28 px, 3.3 on 28-px
silhouettes and 1.0 on emoji shrunk to 24 px, and gained 0.7 on 28-px digits and 0.7 on textures
shrunk to 28 px: -1.5 points on average (standard error 0.9 over the 15 paired runs), where the sets
of 72 to 92 px gained 0.9. The threshold sits between the two groups measured.
Global average pooling makes any size work; preprocess.json carries the choice to export, serving
and the edge.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace

from zoo.errors import UsageError
from zoo.preprocess import PreprocessConfig

SIZE_STEP = 32  # the backbones' total stride
FINETUNE_FLOOR = 192  # the smallest size `auto` picks for a backbone that learns (see the module docstring)
TINY_SIDE = 48  # a median shorter side below it fine-tunes at the native size (see the module docstring)
MIN_SIZE, MAX_SIZE = 32, 1024  # what an explicit --image-size may ask for


def parse_image_size(value: str | int) -> int | None:
    """None for "auto", else the explicit size, checked; a bad value is one sentence."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--image-size must be auto or a whole number of pixels, not {value!r}: "
                         "give e.g. 224.") from None
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"--image-size {size} is outside {MIN_SIZE}-{MAX_SIZE} pixels: give a size in that range, "
                         "or auto.")
    return size


def auto_size(shorter_sides: Sequence[int], native: int, every_layer_learns: bool = False) -> tuple[int, str]:
    """The size `auto` picks for images whose shorter sides (as stored) are given, and why."""
    if not every_layer_learns:
        return native, f"frozen pretrained layers read the images at the backbone's native {native} px"
    if not shorter_sides:
        return native, f"no images to measure: the backbone's native {native} px"
    median = statistics.median(shorter_sides)
    if median >= native:
        return native, f"the median shorter side is {median:g} px, at least the backbone's native {native} px"
    if median < TINY_SIDE:
        return native, (f"the median shorter side is {median:g} px: images under {TINY_SIDE} px fine-tune at the "
                        f"backbone's native {native} px (at {FINETUNE_FLOOR} px they lost accuracy)")
    size = min(native, max(FINETUNE_FLOOR, SIZE_STEP * math.ceil(median / SIZE_STEP)))
    return size, (f"the median shorter side is {median:g} px: {size} px for fine-tuning (a multiple of {SIZE_STEP}, "
                  f"at least {FINETUNE_FLOOR}) instead of blowing the images up to the backbone's native {native} px")


def choose_preprocess(native: PreprocessConfig, requested: str | int, shorter_sides: Sequence[int],
                      every_layer_learns: bool = False) -> tuple[PreprocessConfig, dict[str, object]]:
    """The run's preprocessing at the chosen size, and what config.json records about the choice."""
    size = parse_image_size(requested)
    if size is None:
        size, reason = auto_size(shorter_sides, native.input_size, every_layer_learns)
    else:
        reason = f"--image-size {size}"
    cfg = native if size == native.input_size else replace(native, input_size=size, max_size=0)
    return cfg, {"requested": str(requested), "size": size, "native": native.input_size, "reason": reason}
