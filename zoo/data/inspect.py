"""`zoo data inspect`: what is in an image folder, and which files cannot be read."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from zoo.data.folder import load_image_folder
from zoo.preprocess import ImageError, open_image, to_rgb
from zoo.progress import progress_bar


def inspect_folder(root: Path | str) -> dict:
    """Counts per split and class, image size range, imbalance ratio and unreadable files (not fatal)."""
    data = load_image_folder(root)
    report: dict = {"root": str(data.root), "classes": data.classes, "presplit": data.presplit, "splits": {}}
    widths, heights, unreadable = [], [], []
    splits = ("train", "val", "test") if data.test else ("train", "val")  # DIR/test/<class>, when there is one
    for split in splits:
        report["splits"][split] = data.class_counts(split)
    samples = data.train + data.val + data.test
    for sample in progress_bar(samples, "reading images"):
        try:
            img = to_rgb(open_image(sample.path))
            widths.append(img.width)
            heights.append(img.height)
        except (ImageError, OSError, Image.DecompressionBombError) as e:
            unreadable.append({"path": str(sample.path), "reason": str(e)})
    train_counts = list(report["splits"]["train"].values())
    report["images"] = len(samples)
    report["readable"] = len(samples) - len(unreadable)
    report["width_range"] = [min(widths), max(widths)] if widths else None
    report["height_range"] = [min(heights), max(heights)] if heights else None
    report["imbalance_ratio"] = (max(train_counts) / min(train_counts)) if train_counts and min(train_counts) else None
    report["unreadable"] = unreadable
    return report


def report_table(report: dict[str, Any]) -> Any:
    """Images per class and split, as a rich table."""
    from rich.table import Table

    table = Table(title=report["root"])
    table.add_column("class")
    splits = list(report["splits"])
    for split in splits:
        table.add_column(split, justify="right")
    for c in report["classes"]:
        table.add_row(c, *(str(report["splits"][split][c]) for split in splits))
    return table


def report_lines(report: dict[str, Any]) -> list[str]:
    """Sizes, imbalance and every unreadable file, as rich markup lines."""
    lines = [f"images: {report['images']} ({report['readable']} readable); "
             f"width {report['width_range']}, height {report['height_range']}; "
             f"imbalance ratio {report['imbalance_ratio'] or 'n/a'}"
             + ("" if report["presplit"] else " (no train/val folders: zoo splits 80/20 with the seed)")]
    lines += [f"[yellow]unreadable:[/yellow] {bad['path']}: {bad['reason']}" for bad in report["unreadable"]]
    return lines
