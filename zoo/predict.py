"""`zoo predict`: collect image paths, run them on the edge runtime (or a server), format the answers.

Torch-free on purpose: this is the path an edge device runs, and its start-up time matters.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from zoo.data.folder import IMAGE_EXTENSIONS
from zoo.errors import ZooError


def _folder_images(folder: Path) -> list[Path]:
    """Every entry with an image extension, regular file or not: a folder named x.jpg, a dangling link or a
    link loop gets its own error row instead of vanishing. Links to folders are not followed (no loops)."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [Path(root) / n for n in (*dirs, *files) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Files as given (any extension, so a bad file is reported, not hidden); folders searched recursively.

    Every path given yields rows: one that does not exist gets its own error row from the model, so
    the good files beside it are still classified.
    """
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        found = _folder_images(p) if p.is_dir() else []
        out += found or [p]  # an empty folder is a row of its own too: nothing given is silently dropped
    if not out:
        raise ZooError("No images found in the given paths: give image files or folders holding .jpg/.png/... files.")
    return out


def predict_local(model: Path, images: list[Path], top_k: int, batch_size: int,
                  device: str = "auto") -> tuple[list[dict], str]:
    """Per-image {path, top_k, error, variant, ood} and where they ran (the ONNX Runtime provider and the variant).

    `ood` is {"score", "threshold", "out_of_distribution"}, or None for an export without an OOD summary."""
    from zoo.edge import EdgeError, EdgeModel

    try:
        edge = EdgeModel(model, kind="classifier", device=device)
        results = edge.predict(images, top_k=top_k, batch_size=batch_size)
    except EdgeError as e:
        raise ZooError(str(e)) from None
    rows = [{"path": str(p), "top_k": r.top_k, "error": r.error, "variant": edge.variant, "ood": r.ood}
            for p, r in zip(images, results, strict=True)]
    return rows, f"{edge.provider}, {edge.variant}"


def format_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)


def _ood_cells(ood: dict | None) -> list[str]:
    """ood_score, ood_threshold, out_of_distribution: empty without an OOD summary."""
    if not ood:
        return ["", "", ""]
    return [f"{ood['score']:.6f}", f"{ood['threshold']:.6f}", str(bool(ood["out_of_distribution"])).lower()]


def format_csv(rows: list[dict]) -> str:
    """One line per rank (the image's OOD columns repeated on each), or one line for an error."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "rank", "label", "probability", "error", "variant", "ood_score", "ood_threshold",
                     "out_of_distribution"])
    for row in rows:
        variant = row.get("variant") or ""
        ood = _ood_cells(row.get("ood"))
        if row["error"]:
            writer.writerow([row["path"], "", "", "", row["error"], variant, *ood])
        for rank, (label, p) in enumerate(row["top_k"].items(), start=1):
            writer.writerow([row["path"], rank, label, f"{p:.6f}", "", variant, *ood])
    return buf.getvalue()


def _ood_words(ood: dict | None) -> str:
    if not ood:
        return ""
    verdict = "OUT OF DISTRIBUTION" if ood["out_of_distribution"] else "in distribution"
    return f" [ood score {ood['score']:.3f}, threshold {ood['threshold']:.3f}: {verdict}]"


def format_text(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        if row["error"]:
            lines.append(f"{row['path']}: UNREADABLE: {row['error']}")
        else:
            lines.append(f"{row['path']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["top_k"].items())
                         + _ood_words(row.get("ood")))
    return "\n".join(lines)
