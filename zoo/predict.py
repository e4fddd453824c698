"""`zoo predict`: collect image paths, run them on the edge runtime (or a server), format the answers.

Torch-free on purpose: this is the path an edge device runs, and its start-up time matters.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from zoo.data.folder import IMAGE_EXTENSIONS
from zoo.errors import ZooError


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """Files as given (any extension, so a bad file is reported, not hidden); folders searched recursively."""
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            out.append(p)
        else:
            raise ZooError(f"{p} does not exist: give image files or folders of images.")
    if not out:
        raise ZooError("No images found in the given paths: give image files or folders holding .jpg/.png/... files.")
    return out


def predict_local(model: Path, images: list[Path], top_k: int, batch_size: int) -> tuple[list[dict], str]:
    """Per-image {path, top_k, error, variant} and where they ran (the ONNX Runtime provider and the variant)."""
    from zoo.edge import EdgeError, EdgeModel

    try:
        edge = EdgeModel(model, kind="classifier")
        results = edge.predict(images, top_k=top_k, batch_size=batch_size)
    except EdgeError as e:
        raise ZooError(str(e)) from None
    rows = [{"path": str(p), "top_k": r.top_k, "error": r.error, "variant": edge.variant}
            for p, r in zip(images, results, strict=True)]
    return rows, f"{edge.provider}, {edge.variant}"


def format_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)


def format_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "rank", "label", "probability", "error", "variant"])
    for row in rows:
        variant = row.get("variant") or ""
        if row["error"]:
            writer.writerow([row["path"], "", "", "", row["error"], variant])
        for rank, (label, p) in enumerate(row["top_k"].items(), start=1):
            writer.writerow([row["path"], rank, label, f"{p:.6f}", "", variant])
    return buf.getvalue()


def format_text(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        if row["error"]:
            lines.append(f"{row['path']}: UNREADABLE: {row['error']}")
        else:
            lines.append(f"{row['path']}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["top_k"].items()))
    return "\n".join(lines)
