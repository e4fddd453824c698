"""Training augmentation: random views at the scale the model sees at inference.

It starts from the inference path (`load_rgb` + `resize` of zoo.preprocess), so an object is as
many pixels wide in training as in serving; a random square crop of the inference size replaces
the fixed centre crop, then a flip and a mild colour jitter, then the same `normalize`.
Every random choice comes from a generator seeded by the caller, so a view is reproducible
(resume, cached augmented features) whatever process or worker draws it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from zoo.preprocess import PreprocessConfig, normalize, resize

AUGMENT_VERSION = 1  # part of the feature-cache key: bump when the recipe below changes
JITTER = 0.2  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]


def item_seed(*parts) -> int:
    """A 63-bit seed from any tuple of values, stable across processes (unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def augment(img: Image.Image, cfg: PreprocessConfig, seed: int) -> np.ndarray:
    """An RGB image -> a normalised float32 (3, S, S) array, S = cfg.input_size."""
    g = torch.Generator().manual_seed(seed)
    img = resize(img, cfg)
    size = cfg.input_size
    w, h = img.size
    cw, ch = min(size, w), min(size, h)
    x = int(torch.randint(0, w - cw + 1, (), generator=g))
    y = int(torch.randint(0, h - ch + 1, (), generator=g))
    img = img.crop((x, y, x + cw, y + ch))
    if float(torch.rand((), generator=g)) < 0.5:
        img = TF.hflip(img)
    img = TF.adjust_brightness(img, _uniform(g, 1 - JITTER, 1 + JITTER))
    img = TF.adjust_contrast(img, _uniform(g, 1 - JITTER, 1 + JITTER))
    img = TF.adjust_saturation(img, _uniform(g, 1 - JITTER, 1 + JITTER))
    arr = normalize(img, cfg)
    if arr.shape[1:] != (size, size):
        # Only very elongated images have a side shorter than S after the capped resize; pad with
        # zeros (the mean colour after normalisation) instead of changing their scale.
        padded = np.zeros((3, size, size), np.float32)
        padded[:, : arr.shape[1], : arr.shape[2]] = arr
        arr = padded
    return arr
