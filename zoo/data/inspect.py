"""`zoo data inspect`: what is in an image folder, and which files cannot be read."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from zoo.data.folder import load_image_folder
from zoo.preprocess import ImageError, open_image, to_rgb
from zoo.progress import progress_bar


def inspect_folder(root: Path | str, show_progress: bool = True) -> dict:
    """Counts per split and class, image size range, imbalance ratio and unreadable files (not fatal)."""
    data = load_image_folder(root)
    report: dict = {"root": str(data.root), "classes": data.classes, "presplit": data.presplit, "splits": {}}
    widths, heights, unreadable = [], [], []
    for split in ("train", "val"):
        report["splits"][split] = data.class_counts(split)
    samples = data.train + data.val
    for sample in progress_bar(samples, "reading images", enabled=show_progress):
        try:
            img = to_rgb(open_image(sample.path))
            widths.append(img.width)
            heights.append(img.height)
        except (ImageError, OSError, Image.DecompressionBombError) as e:
            unreadable.append({"path": str(sample.path), "reason": str(e)})
    train_counts = [n for n in report["splits"]["train"].values()]
    report["images"] = len(samples)
    report["readable"] = len(samples) - len(unreadable)
    report["width_range"] = [min(widths), max(widths)] if widths else None
    report["height_range"] = [min(heights), max(heights)] if heights else None
    report["imbalance_ratio"] = (max(train_counts) / min(train_counts)) if train_counts and min(train_counts) else None
    report["unreadable"] = unreadable
    return report
