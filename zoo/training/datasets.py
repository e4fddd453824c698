"""Training data: every image checked once, tensors for the inference view or an augmented one,
and batches of equal shapes so evaluation never needs a crop."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from zoo.data.folder import Sample
from zoo.preprocess import ImageError, PreprocessConfig, load_rgb, preprocess, resized_shape
from zoo.progress import progress_bar
from zoo.training.augment import augment


@dataclass(frozen=True)
class ImageRecord:
    """A readable image: its label, content hash (the cache key), shape after the inference resize and
    size as stored (from which `at_size` derives the shape at another --image-size without decoding again)."""

    path: Path
    label: int
    sha256: str
    height: int
    width: int
    stored: tuple[int, int] = (0, 0)  # (width, height) as decoded

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def _check(sample: Sample, cfg: PreprocessConfig) -> ImageRecord | dict:
    try:
        data = sample.path.read_bytes()
        img = load_rgb(data, cfg)  # a full decode: truncated files fail here, not mid-epoch
    except (ImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return {"path": str(sample.path), "reason": str(e)}
    w, h = resized_shape(img.width, img.height, cfg)
    return ImageRecord(sample.path, sample.label, hashlib.sha256(data).hexdigest(), h, w, img.size)


def at_size(records: Sequence[ImageRecord], cfg: PreprocessConfig) -> list[ImageRecord]:
    """The records with their shapes after resizing for `cfg` (another input size than they were scanned at)."""
    out = []
    for r in records:
        w, h = resized_shape(*r.stored, cfg)
        out.append(replace(r, height=h, width=w))
    return out


def scan_images(samples: Sequence[Sample], cfg: PreprocessConfig, description: str = "checking images",
                ) -> tuple[list[ImageRecord], list[dict]]:
    """Decode every image once: the readable ones as records, the others as {path, reason}."""
    threads = min(8, os.cpu_count() or 1)  # Pillow releases the GIL while decoding
    with ThreadPoolExecutor(threads) as pool:
        results = list(progress_bar(pool.map(lambda s: _check(s, cfg), samples), description,
                                    total=len(samples)))
    return [r for r in results if isinstance(r, ImageRecord)], [r for r in results if isinstance(r, dict)]


class ImageViews(Dataset):
    """(image tensor, label) pairs: the inference view, or, with per-item seeds, an augmented view."""

    def __init__(self, records: Sequence[ImageRecord], cfg: PreprocessConfig, seeds: Sequence[int] | None = None):
        self.records, self.cfg, self.seeds = list(records), cfg, seeds

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rec = self.records[i]
        if self.seeds is None:
            arr = preprocess(rec.path, self.cfg)  # exactly what serving and the edge compute
        else:
            arr = augment(load_rgb(rec.path, self.cfg), self.cfg, self.seeds[i])
        return torch.from_numpy(arr), rec.label

    def shapes(self) -> list[tuple[int, int]]:
        if self.seeds is None:
            return [r.shape for r in self.records]
        return [(self.cfg.input_size, self.cfg.input_size)] * len(self.records)


class KeptViews(ImageViews):
    """ImageViews whose items are made once and kept in memory, for a set read again in every epoch with
    the same seeds: BatchNorm calibration's crops (decoding and augmenting 400 of them took 1.1 s of
    each epoch's 6 s recalibration on 2 cores). Only a set within `budget_bytes` as float32 is kept
    (512 images at 224 px are 308 MB); a larger one is made again on every read. Items are kept in the
    process that reads them, so with DataLoader workers (whose copies end with each epoch) this keeps
    nothing: there the workers make them in parallel instead."""

    def __init__(self, records: Sequence[ImageRecord], cfg: PreprocessConfig, seeds: Sequence[int] | None = None,
                 budget_bytes: int = 1 << 30):
        super().__init__(records, cfg, seeds)
        self.keeps = sum(3 * 4 * h * w for h, w in self.shapes()) <= budget_bytes
        self._kept: dict[int, tuple[torch.Tensor, int]] = {}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self._kept.get(i)
        if item is None:
            item = super().__getitem__(i)
            if self.keeps:
                self._kept[i] = item  # the DataLoader stacks items into a new batch: this one is never changed
        return item


def batch_shapes(dataset: ImageViews, batches: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """(images, height, width) of each of shape_batches' batches: zoo.hardware.Compute.shaped_pass picks a
    layout from them (cuDNN plans every new one, a short last batch included)."""
    shapes = dataset.shapes()
    return [(len(idx), *shapes[idx[0]]) for idx in batches if len(idx)]


def shape_batches(order: Sequence[int], shapes: Sequence[tuple[int, int]] | None, batch_size: int,
                  generator: torch.Generator | None = None) -> list[list[int]]:
    """Batches that keep `order` within each shape; shuffled batch order when a generator is given.

    Images of different sizes after the aspect-keeping resize go to different batches, so nothing
    is cropped or padded, and (in eval mode) a prediction never depends on the rest of its batch.
    """
    groups: dict = {}
    for i in order:
        groups.setdefault(shapes[i] if shapes is not None else None, []).append(i)
    batches = [idx[j: j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]
    if generator is not None:
        batches = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def epoch_order(labels: Sequence[int], generator: torch.Generator, balanced_sampling: bool) -> list[int]:
    """A shuffled pass over the data, or, for `--balance sampler`, a draw in which every class is equally likely."""
    n = len(labels)
    if not balanced_sampling:
        return torch.randperm(n, generator=generator).tolist()
    y = torch.as_tensor(labels)
    counts = torch.bincount(y).float()
    weights = (1.0 / counts)[y]
    return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()


def loader(dataset: ImageViews, batches: list[list[int]], workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches decoded by `workers` processes; page-locked when they go to a CUDA GPU (pin_memory)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory)
