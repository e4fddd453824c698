"""Prove pretrained weights really load: classify real ImageNet validation photos that ship in a wheel.

The foolbox wheel carries 20 photos named imagenet_<i>_<label>.jpg; they are read as files and
foolbox itself is never imported.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

from zoo.backbones.registry import create_model, get_spec
from zoo.errors import UsageError, ZooError
from zoo.preprocess import preprocess

_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpe?g$")


def packaged_imagenet_photos() -> Path | None:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if any(folder.glob("imagenet_*.jpg")) else None


def labelled_photos(folder: Path) -> list[tuple[Path, int]]:
    return sorted((p, int(m.group(2))) for p in folder.iterdir() if (m := _NAME.search(p.name)))


@torch.no_grad()
def check_pretrained(name: str, folder: Path | None = None) -> dict:
    """Top-1 of the pretrained ImageNet classifier on labelled photos (imagenet_<i>_<label>.jpg)."""
    folder = folder or packaged_imagenet_photos()
    if folder is None:
        raise ZooError("No labelled ImageNet photos found: run `pip install foolbox` (its wheel ships 20) "
                       "or pass --images DIR.")
    photos = labelled_photos(folder)
    if not photos:
        raise UsageError(f"{folder} holds no files named imagenet_<i>_<label>.jpg: point --images at such a folder.")
    spec = get_spec(name)
    if spec.notes:
        raise UsageError(f"{name} cannot be checked on ImageNet: {spec.notes}.")
    model = create_model(name, num_classes=None, pretrained=True).eval()
    cfg = spec.preprocess_config()
    predictions = []
    for path, label in photos:
        x = torch.from_numpy(preprocess(path, cfg)).unsqueeze(0)
        predictions.append((path.name, label, int(model(x).argmax(1))))
    correct = sum(p == label for _, label, p in predictions)
    return {"model": name, "images": len(photos), "top1_correct": correct,
            "top1": correct / len(photos), "predictions": predictions}
