"""deploy.json: which variant of each exported graph is deployed; the archives and the edge read it.

`zoo export` writes it (export/deploy.py decides); `zoo predict`, zoo.edge.EdgeModel and the
archives' serving.json follow it. Torch-free: the edge runtime reads it on a device without PyTorch.
The fp32 graph always stays beside a deployed variant: it is what a variant that fails to load falls
back to.
"""
from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import ZooError

MANIFEST = "deploy.json"
FP32 = "fp32"
VARIANTS = (FP32, "int8", "fp16")
KINDS = ("classifier", "features")


def variant_file(kind: str, variant: str) -> str:
    """classifier.onnx for fp32, classifier.int8.onnx for int8, and so on."""
    return f"{kind}.onnx" if variant == FP32 else f"{kind}.{variant}.onnx"


def read_manifest(export_dir: Path) -> dict | None:
    """The export folder's deploy.json, or None for an export made before zoo wrote one (fp32 then)."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ZooError(f"{path} is not readable JSON: run `zoo export RUN_DIR --deploy auto` again.") from None
    if not isinstance(manifest, dict):
        raise ZooError(f"{path} is not a deploy manifest: run `zoo export RUN_DIR --deploy auto` again.")
    return manifest


def deployed(export_dir: Path, kind: str, variant: str | None = None, must_exist: bool = True) -> tuple[str, str]:
    """(file name, variant) of `kind` to run: `variant` when given, else what deploy.json names, else fp32.

    must_exist=False lets a missing deployed file through, for callers that fall back to fp32.
    """
    if variant is None:
        entry = (read_manifest(export_dir) or {}).get(kind) or {}
        variant = entry.get("variant", FP32)
    if variant not in VARIANTS:
        raise ZooError(f"{variant!r} is not a variant zoo deploys: choose {', '.join(VARIANTS)}.")
    name = variant_file(kind, variant)
    if must_exist and not (Path(export_dir) / name).is_file():
        raise ZooError(f"{export_dir} holds no {name}: export with `--quantize {variant}` or deploy fp32.")
    return name, variant
