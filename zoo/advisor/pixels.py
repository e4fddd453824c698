"""Pixel statistics for the similarity score: do the images look like photographs at all?

Photographs, colour or grey, large or small, carry texture and sensor noise almost everywhere; rendered
symbols (digits, silhouettes, icons, line drawings) are mostly flat fills. The share of pixels whose
neighbourhood varies at all separates the two without any pretrained network, and it does not depend
on colour, which the BatchNorm shift confounds (grey photographs shift the first layers' statistics more
than colourful icons do). Measured on the images as stored, so upscaling never hides flat fills.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.preprocess import ImageError, open_image

# Large photographs are reduced first: the statistic is about the scene, not the sensor's resolution.
MAX_SIDE = 256


def textured_fraction(path: Path) -> float:
    """The share of pixels whose right or lower neighbour differs in grey level (0: one flat fill)."""
    grey = open_image(path).convert("L")
    if max(grey.size) > MAX_SIDE:
        grey.thumbnail((MAX_SIDE, MAX_SIDE))
    g = np.asarray(grey, dtype=np.int16)
    if min(g.shape) < 2:
        return 0.0
    flat = (np.diff(g, axis=1)[:-1, :] == 0) & (np.diff(g, axis=0)[:, :-1] == 0)
    return 1.0 - float(flat.mean())


def mean_textured_fraction(paths: Sequence[Path]) -> float | None:
    """Mean over the readable images; None when none is readable."""
    values = []
    for p in paths:
        try:
            values.append(textured_fraction(p))
        except (ImageError, OSError):
            continue
    return float(np.mean(values)) if values else None
