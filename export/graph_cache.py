"""Traced export graphs kept on disk, so that exporting the same weights again skips the trace.

torch.onnx.export(dynamo=True) spends most of an export tracing the model: about two thirds of an
efficientnet_lite0 export on two CPU cores (benchmarks/export_cache.py). Exporting a run again - with
another --quantize or --deploy, into another folder, after a refused variant or a copy of the run -
traces the very same graph. So the traced graph is kept in zoo's cache folder, keyed by everything
it depends on: the weights bit for bit with their names and shapes, the architecture, the opset,
zoo's model and export code, and the torch, torchvision, onnx and onnxscript versions.

An entry is trusted no further than a fresh trace: the parity check against PyTorch runs on every
export, whatever the graph's origin, and an entry that does not load is traced again. The folder is
held under ZOO_EXPORT_CACHE_MB (default 2048; 0 turns the cache off), least recently used first.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from zoo.atomic import atomic_write_bytes
from zoo.backbones import ZooModel
from zoo.log import get_logger

log = get_logger(__name__)

CACHE_MB_ENV = "ZOO_EXPORT_CACHE_MB"
DEFAULT_MB = 2048
VERSION = 1  # bump when what a graph is made from changes outside the files hashed below
TRACED, REUSED = "traced", "reused from the export cache"


def folder() -> Path:
    """Beside the feature cache (ZOO_CACHE_DIR, else ~/.cache/zoo)."""
    from zoo.training.feature_cache import default_cache_dir

    return default_cache_dir().parent / "export-graphs"


def limit_bytes() -> int:
    raw = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        return max(0, int(float(raw) * 2**20)) if raw else DEFAULT_MB * 2**20
    except ValueError:
        log.warning(f"{CACHE_MB_ENV}={raw!r} is not a number of megabytes: using {DEFAULT_MB}")
        return DEFAULT_MB * 2**20


def _code_digest() -> str:
    """The source of the model definitions and of the export itself: an edited file is a different graph."""
    import zoo.backbones

    files = sorted(Path(zoo.backbones.__file__).parent.glob("*.py"))
    files += [Path(__file__).parent / "onnx_export.py", Path(__file__)]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def key(model: ZooModel, opset: int) -> str:
    import onnxscript
    import torchvision

    h = hashlib.sha256()
    parts = {"version": VERSION, "opset": opset, "model": model.name, "architecture": repr(model),
             "code": _code_digest(), "torch": torch.__version__, "torchvision": torchvision.__version__,
             "onnx": onnx.__version__, "onnxscript": getattr(onnxscript, "__version__", "")}
    h.update(json.dumps(parts, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:40]


def traced_graph(model: ZooModel, opset: int, trace: Callable[[], onnx.ModelProto]) -> tuple[onnx.ModelProto, str]:
    """`trace()`'s graph, from the cache when these weights were exported before; and which it was."""
    budget = limit_bytes()
    if budget == 0:
        return trace(), TRACED
    path = folder() / f"{key(model, opset)}.onnx"
    if path.is_file():
        try:
            graph = onnx.load_from_string(path.read_bytes())
            os.utime(path)  # most recently used
            log.info(f"Reusing the graph traced for these weights before ({path.name} in {path.parent})")
            return graph, REUSED
        except Exception as e:  # noqa: BLE001 - a damaged entry: trace again and replace it
            log.warning(f"The cached graph {path} does not load ({type(e).__name__}): tracing again")
    graph = trace()
    _keep(graph, path, budget)
    return graph, TRACED


def _keep(graph: onnx.ModelProto, path: Path, budget: int) -> None:
    """Store the graph and evict the least recently used entries past the budget; never fails the export."""
    try:
        data = graph.SerializeToString()
        if len(data) > budget:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        _evict(path.parent, budget, keep=path)
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written costs time, not the export
        log.warning(f"Could not keep the traced graph in {path.parent} ({type(e).__name__}: {e})")


def _evict(where: Path, budget: int, keep: Path) -> None:
    entries = []
    for p in where.glob("*.onnx"):
        try:
            st = p.stat()
        except FileNotFoundError:  # another process evicted it first
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= budget:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size
