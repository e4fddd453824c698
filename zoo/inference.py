"""ONNX Runtime sessions, same-shape grouping and stable top-k: what the edge runtime and the handlers share.

Imports numpy and (lazily) onnxruntime only, never the `zoo` package: export/archive.py copies this
file into every .mar archive as zoo_inference.py, where the TorchServe handler imports it on a server
that has no zoo package. onnxruntime loads on first use because an archive with the torch runtime
needs the grouping and top-k but not onnxruntime.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import sys
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
    if CUDA in chosen:
        _preload_cuda_libraries()
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


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (nvidia-* wheels) before the CUDA provider needs them.

    Without this the provider finds them only on LD_LIBRARY_PATH, and edge inference, which never imports
    torch, would fall back to the CPU. Where torch is imported it has loaded its own copies already, and
    loading a second set could clash, so ORT's advice is to skip it then.
    """
    import onnxruntime as ort

    if "torch" in sys.modules or not hasattr(ort, "preload_dlls"):
        return
    said = io.StringIO()  # it print()s what it could not load, which would corrupt `zoo predict --json`
    try:
        with contextlib.redirect_stdout(said):
            ort.preload_dlls()
    except Exception as e:  # a missing or odd CUDA install: the session still falls back to the CPU
        logger.debug("onnxruntime.preload_dlls() failed: %s", e)
    if said.getvalue().strip():
        logger.debug("onnxruntime.preload_dlls(): %s", said.getvalue().strip())


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


# ---------------------------------------------------------------- out-of-distribution score
# THE one computation of the OOD score: the edge runtime, `zoo predict`, both handlers' runtimes and
# `zoo evaluate` all call OodScorer, loaded from the ood.npz `zoo export` writes (export/ood.py).
# The method is kNN on L2-normalised bottleneck features (Sun et al. 2022, "deep nearest neighbors"):
# the score is the cosine distance from an image's features to its k-th nearest training feature.
# It was chosen over Mahalanobis distance (class means, a shrunk shared covariance, raw, L2-normalised
# or PCA-reduced features) by benchmarks/ood.py: a higher AUROC on average and on the hardest pair
# (the README has the table). The score is higher for stranger images; the threshold is the 95th
# percentile of the val split's scores, one per classifier variant (each on its own features), so
# about 5% of val images are flagged.
OOD_FILE = "ood.npz"
OOD_FORMAT = "zoo-ood-knn"
OOD_VERSION = 1


class OodError(ValueError):
    """ood.npz is damaged or not a zoo OOD summary; the message is one sentence that says what to do."""


def ood_field(score: float, threshold: float) -> dict[str, Any]:
    """The `ood` field of one answer: {"score", "threshold", "out_of_distribution"}."""
    return {"score": float(score), "threshold": float(threshold), "out_of_distribution": bool(score > threshold)}


class OodScorer:
    """Distance to the k-th nearest training feature (cosine distance, 0 to 2) and the thresholds per variant."""

    def __init__(self, bank: np.ndarray, k: int, thresholds: dict[str, float], meta: dict[str, Any] | None = None):
        bank = np.asarray(bank, dtype=np.float64)
        if bank.ndim != 2 or not len(bank) or not 1 <= int(k) <= len(bank):
            raise OodError(f"an OOD summary needs 1 <= k <= its {len(bank)} training features, not k={k}")
        self.bank = bank  # L2-normalised training features, one per row (stored as float16)
        self.k = int(k)
        self.thresholds = {str(v): float(t) for v, t in thresholds.items()}
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """[N] scores for [N, D] (or [D]) bottleneck features: cosine distance to the k-th nearest training feature."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.dim:
            raise ValueError(f"The OOD summary holds {self.dim}-dimensional features, not {x.shape[1]}.")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        distances = 1.0 - x @ self.bank.T
        return np.partition(distances, self.k - 1, axis=1)[:, self.k - 1]

    def threshold(self, variant: str = "fp32") -> float:
        """The threshold calibrated for the variant that ran (fp32's for a variant calibrated without one)."""
        return self.thresholds.get(variant, self.thresholds["fp32"])

    def fields(self, features: np.ndarray, variant: str = "fp32") -> list[dict[str, Any]]:
        """The `ood` field of each image, for features computed by `variant`."""
        limit = self.threshold(variant)
        return [ood_field(s, limit) for s in self.score(features)]

    def arrays(self) -> dict[str, np.ndarray]:
        """What ood.npz holds: the bank in float16 and the metadata as one JSON string (no pickled objects)."""
        meta = {**self.meta, "format": OOD_FORMAT, "version": OOD_VERSION, "k": self.k, "thresholds": self.thresholds}
        return {"bank": self.bank.astype(np.float16), "meta": np.array(json.dumps(meta, sort_keys=True))}

    @classmethod
    def load(cls, path: Path | str) -> OodScorer:
        """Read ood.npz safely (allow_pickle=False); a damaged or foreign file is one OodError sentence."""
        path = Path(path)
        advice = "re-run `zoo export` to write it again, or delete it to serve without the OOD score."
        try:
            with np.load(path, allow_pickle=False) as data:
                bank, meta = np.array(data["bank"]), json.loads(str(data["meta"][()]))
            if meta.get("format") != OOD_FORMAT or int(meta.get("version", 0)) > OOD_VERSION:
                raise OodError(f"{path} is not an OOD summary this code reads (format {meta.get('format')!r}, "
                               f"version {meta.get('version')!r}): {advice}")
            scorer = cls(bank, int(meta["k"]), {str(v): float(t) for v, t in meta["thresholds"].items()}, meta)
        except OodError as e:
            raise OodError(str(e) if str(e).startswith(str(path)) else f"{path} is damaged ({e}): {advice}") from None
        except Exception as e:  # zip, JSON, key and value errors: a truncated copy or someone else's file
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            if "pickle" in reason:  # numpy's own advice (load it unsafely) is not one to pass on
                reason = "it holds pickled objects, which are never loaded"
            raise OodError(f"{path} is damaged or not an OOD summary ({type(e).__name__}: {reason}): "
                           f"{advice}") from None
        if "fp32" not in scorer.thresholds or not np.isfinite(scorer.bank).all():
            raise OodError(f"{path} is damaged (no fp32 threshold, or non-finite features): {advice}")
        return scorer


def load_ood(folder: Path | str) -> OodScorer | None:
    """The OOD summary beside a model, or None (logged once) for an export made before zoo wrote one."""
    path = Path(folder) / OOD_FILE
    if not path.is_file():
        logger.info("%s holds no %s (an export made before the OOD score, or without its images): answers carry "
                    "no ood field", folder, OOD_FILE)
        return None
    return OodScorer.load(path)
