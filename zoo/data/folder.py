"""Find the images and classes of an ImageFolder, split train/val (and test) when the user did not.

The test split is held out first and only ever reports the final figure: DIR/test/<class> beside
DIR/train, or a seeded, stratified `test_fraction` of every class. Without either there is none,
and the train/val split is exactly what it is without a test split.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import UsageError, ZooError

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
    test: list[Sample] = field(default_factory=list)  # held out: never used to choose anything
    test_source: str | None = None  # "folder" (DIR/test), "fraction" (held out with the seed) or None

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


def hold_out_test(files: dict[str, list[Path]], classes: list[str], test_fraction: float, seed: int
                  ) -> tuple[dict[str, list[Path]], list[Sample]]:
    """A stratified, seeded test split taken before train/val; returns (what is left, the test samples)."""
    rng = random.Random(f"test-{seed}")  # its own stream: the val split of the rest stays seed-driven
    left: dict[str, list[Path]] = {}
    test: list[Sample] = []
    for label, name in enumerate(classes):
        paths = list(files[name])
        rng.shuffle(paths)
        n_test = max(1, round(len(paths) * test_fraction)) if len(paths) > 2 else 0
        test += [Sample(p, label) for p in sorted(paths[:n_test])]
        left[name] = sorted(paths[n_test:])
    return left, test


def _labelled(folder: Path, classes: list[str], what: str) -> list[Sample]:
    files = class_folders(folder)
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise ZooError(f"{folder / unknown[0]} has no matching folder in {folder.parent / 'train'}: "
                       f"give train/ and {what}/ the same class folders.")
    return [Sample(p, i) for i, c in enumerate(classes) for p in files.get(c, [])]


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 <= test_fraction < 1 or not 0 < val_fraction < 1 or val_fraction + test_fraction >= 1:
        raise UsageError("The val and test fractions must each be between 0 and 1 and leave images to train on: "
                         "give e.g. --test-fraction 0.1.")


def load_image_folder(root: Path | str, val_fraction: float = 0.2, seed: int = 0,
                      test_fraction: float = 0.0) -> ImageFolderData:
    """DIR/train/<class> with DIR/val/<class> (or val split off train) and DIR/test/<class> if present;
    or DIR/<class>, split stratified with the seed (a test_fraction held out first)."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root} does not exist: give the folder that holds your class folders.")
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder: give the folder that holds your class folders.")
    _check_fractions(val_fraction, test_fraction)
    presplit = (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir())
    files = class_folders(root / "train" if presplit else root)
    classes = sorted(files)
    _check_classes(root / "train" if presplit else root, classes)
    test, test_source = [], None
    if presplit and (root / "test").is_dir():
        test, test_source = _labelled(root / "test", classes, "test"), "folder"
    elif test_fraction > 0:
        files, test = hold_out_test(files, classes, test_fraction, seed)
        test_source = "fraction"
    if presplit and (root / "val").is_dir():
        train = [Sample(p, i) for i, c in enumerate(classes) for p in files[c]]
        val = _labelled(root / "val", classes, "val")
    else:
        train, val = stratified_split(files, classes, val_fraction, seed)
    return ImageFolderData(root, classes, train, val, presplit=presplit and (root / "val").is_dir(), test=test,
                           test_source=test_source)
