"""ONNX Runtime sessions, same-shape grouping and stable top-k: what the edge runtime and the handlers share.

Imports numpy and (lazily) onnxruntime only, never the `zoo` package: export/archive.py copies this
file into every .mar archive as zoo_inference.py, where the TorchServe handler imports it on a server
that has no zoo package. onnxruntime loads on first use because an archive with the torch runtime
needs the grouping and top-k but not onnxruntime.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger("zoo.inference")  # under zoo's logger in the package; the worker's log in an archive

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Accelerators in order of preference. TensorRT is left out on purpose: it compiles an engine per
# input shape, which is slow with the any-size inputs zoo serves.
ACCELERATOR_PROVIDERS = (CUDA, "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build lists (a GPU build lists CUDA even without a GPU)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Providers to try, best first: the requested ones or an installed accelerator (if any), then always the CPU."""
    if requested:
        return list(requested) + ([] if CPU in requested else [CPU])
    available = available_providers()
    return [p for p in ACCELERATOR_PROVIDERS if p in available][:1] + [CPU]


def open_session(model: Path | str | bytes, providers: Sequence[str] | None = None, threads: int = 0,
                 inter_op_threads: int = 0, device_id: int | None = None,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on the best of `providers` (default: choose_providers()) that really works here.

    threads and inter_op_threads: intra- and inter-op threads, 0 for ONNX Runtime's own choice.
    device_id: the GPU the CUDA provider uses (TorchServe gives each worker one).

    An installed GPU build of onnxruntime lists CUDA even on machines without a GPU or without the
    CUDA libraries; ORT then falls back to the CPU on its own and logs an error. The error is
    silenced while trying, and `session.get_providers()` says what was really picked.
    """
    import onnxruntime as ort

    chosen = choose_providers(providers)
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    with_options: list[Any] = [(p, {"device_id": device_id}) if p == CUDA and device_id is not None else p
                               for p in chosen]
    if len(chosen) > 1:
        ort.set_default_logger_severity(4)  # hide the expected "failed to load CUDA" noise
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=with_options)
    finally:
        ort.set_default_logger_severity(2)


def open_deployed(model: Path, fallback: Path | None, providers: Sequence[str] | None = None,
                  **kwargs: Any) -> tuple[ort.InferenceSession, Path]:
    """A session on the deployed variant `model`, or, when it cannot load or run, on the fp32 `fallback`.

    A variant can fail where fp32 runs (an execution provider without int8 kernels, a damaged
    file): the caller gets the fp32 graph and one warning line, never an error. One small image is
    run through a variant before it is trusted, because some providers refuse a kernel only at run
    time. Returns the session and the file it runs. kwargs go to open_session.
    """
    if fallback is None or Path(fallback) == Path(model):
        return open_session(model, providers, **kwargs), Path(model)
    try:
        session = open_session(model, providers, **kwargs)
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})
        return session, Path(model)
    except Exception as e:  # ORT raises its own exception types for unreadable files and missing kernels
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        logger.warning("%s could not be loaded (%s): running %s (fp32) instead", Path(model).name, reason,
                       Path(fallback).name)
    return open_session(fallback, providers, **kwargs), Path(fallback)


def same_shape_groups(items: Sequence[Any], max_group: int) -> list[list[int]]:
    """Indices of items (arrays, or shapes) that share one shape, at most max_group per group.

    Only same-shape inputs may share a batch: no padding, so an input's answer never depends on its
    neighbours. Groups come in the order each shape first appears, indices ascending within a group.
    """
    by_shape: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        by_shape.setdefault(tuple(getattr(item, "shape", item)), []).append(i)
    size = max(1, max_group)
    return [indices[start:start + size] for indices in by_shape.values() for start in range(0, len(indices), size)]


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> dict[str, float]:
    """{label: probability} for the k most probable classes, most probable first.

    k is at least 1 and never more than the number of labels; the stable sort keeps ties in label order,
    so the answer is the same wherever it is computed.
    """
    k = max(1, min(int(k), len(labels)))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return {labels[i]: float(probabilities[i]) for i in order}
