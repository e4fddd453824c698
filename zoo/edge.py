"""Edge inference: an exported classifier.onnx or features.onnx run by ONNX Runtime alone.

Imports only onnxruntime, numpy, Pillow, zoo.inference, zoo.ort_device and zoo.preprocess, never
torch, so it runs on a device where PyTorch is not installed. Preprocessing and labels come from
preprocess.json and labels.json beside the model, or from the model's own metadata when the files
are not there.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zoo.deployment import FP32, deployed, variant_file
from zoo.errors import ZooError
from zoo.inference import OodError, OodScorer, load_ood, open_deployed, same_shape_groups
from zoo.inference import top_k as _top_k  # predict() has an argument named top_k
from zoo.ort_device import check_placement, ort_placement
from zoo.preprocess import ImageError, ImageSource, PreprocessConfig, PreprocessConfigError, preprocess

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("zoo.edge")  # zoo.log's hierarchy, without importing rich on a device

CLASSIFIER_FILE = "classifier.onnx"
FEATURES_FILE = "features.onnx"


class EdgeError(ValueError):
    """The model file or folder cannot be used; the message says what to do."""


@dataclass
class EdgeResult:
    """One input's answer: top-k {label: probability} (classifier) or a vector (features), or an error.

    `ood` is the classifier's out-of-distribution field, {"score", "threshold", "out_of_distribution"}
    (zoo.inference.ood_field), or None when the export holds no OOD summary (ood.npz).
    """

    source: str
    top_k: dict[str, float] = field(default_factory=dict)
    features: np.ndarray | None = None
    error: str | None = None
    ood: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        return next(iter(self.top_k), None)


def _resolve_model_path(path: Path, kind: str | None, variant: str | None) -> tuple[Path, Path | None, str | None]:
    """(model file, its fp32 fallback or None, variant or None when the file's metadata must say).

    A folder runs the variant its deploy.json names (or `variant`); a file runs as given.
    """
    path = Path(path)
    if path.is_dir():
        kind = "features" if kind == "features" else "classifier"
        fp32 = path / variant_file(kind, FP32)
        if not fp32.is_file():
            raise EdgeError(f"{path} holds no {fp32.name}: give a folder written by `zoo export` or an .onnx file.")
        try:
            # What deploy.json names may be missing (fp32 then, with the fallback's warning); a named variant may not.
            name, chosen = deployed(path, kind, variant, must_exist=variant is not None)
        except ZooError as e:
            raise EdgeError(str(e)) from None
        return path / name, (fp32 if name != fp32.name else None), chosen
    if not path.is_file():
        raise EdgeError(f"{path} does not exist: give a folder written by `zoo export` or an .onnx file.")
    return path, None, variant


def _read_json_beside(model_path: Path, name: str):
    p = model_path.parent / name
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeError(f"{p} cannot be read as JSON ({type(e).__name__}): re-run `zoo export`.") from None


def _output_size(session: ort.InferenceSession, kind: str) -> int | None:
    """The number of classes (classifier) the graph declares, when it declares a fixed one."""
    outputs = {o.name: o.shape for o in session.get_outputs()}
    shape = outputs.get("probabilities") or outputs.get("logits") or next(iter(outputs.values()))
    return shape[-1] if kind == "classifier" and shape and isinstance(shape[-1], int) else None


class EdgeModel:
    """An exported zoo model (classifier or features) on ONNX Runtime.

    Images are preprocessed one by one by zoo.preprocess and only images that come out the same
    shape share a batch, with no padding, so an image's answer never depends on its neighbours.
    Given an export folder it runs the variant deploy.json names (`variant` overrides), falling back
    to the fp32 graph with one warning when that variant cannot load; `.variant` says which ran.
    A classifier with an OOD summary (ood.npz) beside it scores every image with it (`.ood`, an
    OodScorer, at the threshold of the variant that ran): `EdgeResult.ood`. `device` is --device
    (zoo.ort_device): auto, cpu, cuda or cuda:N; an explicit GPU that cannot run is a UsageError.
    """

    def __init__(self, path: Path | str, kind: str | None = None, providers: Sequence[str] | None = None,
                 options: ort.SessionOptions | None = None, variant: str | None = None, ood: bool = True,
                 device: str = "auto"):
        placed, device_id = ort_placement(device)  # a bad --device is refused before the model is read
        model, fallback, chosen = _resolve_model_path(Path(path), kind, variant)
        try:
            self.session, self.path = open_deployed(model, fallback, providers or placed, options=options,
                                                    device_id=device_id)
        except Exception as e:  # ORT raises its own types for bad files
            raise EdgeError(f"{model} is not a usable ONNX model ({e}): re-run `zoo export`.") from None
        check_placement(self.session, device, placed)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.variant: str = FP32 if self.path == fallback else chosen or meta.get("zoo.precision") or FP32
        self.kind = meta.get("zoo.kind") or ("features" if self.path.name.startswith("features") else "classifier")
        pre = _read_json_beside(self.path, "preprocess.json") or _json_or_none(meta.get("zoo.preprocess"))
        if pre is None:
            raise EdgeError(f"{self.path} has no preprocess.json beside it and no zoo.preprocess metadata: "
                            "export it with `zoo export`.")
        try:
            self.preprocess = PreprocessConfig.from_json(pre)
        except PreprocessConfigError as e:
            raise EdgeError(f"The preprocessing of {self.path}: {e}") from None
        self.labels: list[str] = (_read_json_beside(self.path, "labels.json")
                                  or _json_or_none(meta.get("zoo.labels")) or [])
        if self.kind == "classifier" and not self.labels:
            raise EdgeError(f"{self.path} has no labels.json beside it and no zoo.labels metadata: "
                            "export it with `zoo export`.")
        classes = _output_size(self.session, self.kind)
        if classes is not None and (not isinstance(self.labels, list) or len(self.labels) != classes):
            raise EdgeError(f"The labels beside {self.path} name {len(self.labels)} classes but the model has "
                            f"{classes} outputs: restore labels.json from the same export, or re-run `zoo export`.")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # ood=False skips the OOD summary (export's own accuracy measurements, made before it exists).
        self.ood: OodScorer | None = self._open_ood() if self.kind == "classifier" and ood else None

    def _open_ood(self) -> OodScorer | None:
        """The OOD summary beside the model (None, said once, when there is none); a damaged one is an EdgeError."""
        try:
            scorer = load_ood(self.path.parent)
        except OodError as e:
            raise EdgeError(str(e)) from None
        if scorer is not None and "features" not in self.output_names:
            log.warning("%s has no features output, so its answers carry no ood field: re-run `zoo export`.",
                        self.path.name)
            return None
        return scorer

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for an already preprocessed float32 batch [N, 3, H, W]."""
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))

    def _probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if "probabilities" in outputs:
            return outputs["probabilities"]
        logits = outputs[self.output_names[0]].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def _batches(self, sources: Sequence[ImageSource], batch_size: int):
        """(indices, batch) groups of same-shape images, plus per-index errors for unreadable ones."""
        arrays: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for i, src in enumerate(sources):
            try:
                arrays[i] = preprocess(src, self.preprocess)
            except ImageError as e:
                errors[i] = str(e)
            except Exception as e:  # a decoder bug on odd bytes is still this image's problem alone
                errors[i] = f"The image could not be decoded ({type(e).__name__}): replace or remove it."
        readable = list(arrays)
        groups = []
        for members in same_shape_groups([arrays[i] for i in readable], batch_size):
            chunk = [readable[m] for m in members]
            groups.append((chunk, np.stack([arrays[i] for i in chunk])))
        return groups, errors

    def predict(self, sources: Iterable[ImageSource], top_k: int = 5, batch_size: int = 1) -> list[EdgeResult]:
        """Top-k {label: probability} per image, in input order; unreadable files get an error, not an exception."""
        if self.kind != "classifier":
            raise EdgeError(f"{self.path} is a feature extractor: use .features(), or open classifier.onnx to predict.")
        sources = list(sources)
        results = [EdgeResult(_name(s)) for s in sources]
        groups, errors = self._batches(sources, batch_size)
        for i, msg in errors.items():
            results[i].error = msg
        for indices, batch in groups:
            for i, result in zip(indices, self.predict_batch(batch, top_k), strict=True):
                result.source = results[i].source
                results[i] = result
        return results

    def predict_batch(self, batch: np.ndarray, top_k: int = 5) -> list[EdgeResult]:
        """Top-k per image of an already preprocessed float32 batch [N, 3, H, W]: what `predict` answers for
        each group of same-shape images, and what a server answers for a tensor it was sent."""
        if self.kind != "classifier":
            raise EdgeError(f"{self.path} is a feature extractor: use .features(), or open classifier.onnx to predict.")
        outputs = self.run(batch)
        probs = self._probabilities(outputs)
        ood = self.ood.fields(outputs["features"], self.variant) if self.ood is not None else [None] * len(probs)
        return [EdgeResult(f"<row {n}>", top_k=_top_k(row, self.labels, top_k), ood=field_)
                for n, (row, field_) in enumerate(zip(probs, ood, strict=True))]

    def features(self, sources: Iterable[ImageSource], batch_size: int = 1) -> list[EdgeResult]:
        """The bottleneck vector per image (features.onnx), in input order; unreadable files get an error."""
        sources = list(sources)
        results = [EdgeResult(_name(s)) for s in sources]
        groups, errors = self._batches(sources, batch_size)
        for i, msg in errors.items():
            results[i].error = msg
        for indices, batch in groups:
            for i, result in zip(indices, self.features_batch(batch), strict=True):
                result.source = results[i].source
                results[i] = result
        return results

    def features_batch(self, batch: np.ndarray) -> list[EdgeResult]:
        """The bottleneck vector per image of an already preprocessed float32 batch [N, 3, H, W]."""
        name = "features" if "features" in self.output_names else self.output_names[0]
        return [EdgeResult(f"<row {n}>", features=row) for n, row in enumerate(self.run(batch)[name])]


def _json_or_none(text: str | None):
    return json.loads(text) if text else None


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"
