"""Find the images and classes of an ImageFolder, split train/val when the user did not."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class ImageFolderData:
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    presplit: bool  # True when the user gave train/ and val/ folders

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for s in getattr(self, split):
            counts[self.classes[s.label]] += 1
        return counts


def image_files(folder: Path) -> list[Path]:
    """Image files (by extension) under a class folder, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    out = {d.name: image_files(d) for d in folders}
    empty = [name for name, files in out.items() if not files]
    if empty:
        raise ZooError(f"Class folder {root / empty[0]} has no images: add images to it or remove it.")
    return out


def _check_classes(root: Path, classes: list[str]) -> None:
    if not classes:
        raise ZooError(f"{root} has no class folders: put each class's images in its own sub-folder "
                       "(DIR/<class>/*.jpg).")
    if len(classes) < 2:
        raise ZooError(f"{root} has only one class ({classes[0]}): a classifier needs at least two class folders.")


def stratified_split(files: dict[str, list[Path]], classes: list[str], val_fraction: float, seed: int
                     ) -> tuple[list[Sample], list[Sample]]:
    rng = random.Random(seed)
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(files[name])
        rng.shuffle(paths)
        n_val = max(1, round(len(paths) * val_fraction)) if len(paths) > 1 else 0
        val += [Sample(p, label) for p in sorted(paths[:n_val])]
        train += [Sample(p, label) for p in sorted(paths[n_val:])]
    return train, val


def load_image_folder(root: Path | str, val_fraction: float = 0.2, seed: int = 0) -> ImageFolderData:
    """DIR/train/<class>, DIR/val/<class>; or DIR/<class>, split stratified with the seed."""
    root = Path(root)
    if not root.exists():
        raise ZooError(f"{root} does not exist: give the folder that holds your class folders.")
    if not root.is_dir():
        raise ZooError(f"{root} is not a folder: give the folder that holds your class folders.")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_files = class_folders(root / "train")
        classes = sorted(train_files)
        _check_classes(root / "train", classes)
        val_files = class_folders(root / "val")
        unknown = sorted(set(val_files) - set(classes))
        if unknown:
            raise ZooError(f"{root / 'val' / unknown[0]} has no matching folder in {root / 'train'}: "
                           "give train/ and val/ the same class folders.")
        train = [Sample(p, i) for i, c in enumerate(classes) for p in train_files[c]]
        val = [Sample(p, i) for i, c in enumerate(classes) for p in val_files.get(c, [])]
        return ImageFolderData(root, classes, train, val, presplit=True)
    files = class_folders(root)
    classes = sorted(files)
    _check_classes(root, classes)
    train, val = stratified_split(files, classes, val_fraction, seed)
    return ImageFolderData(root, classes, train, val, presplit=False)
