"""What `zoo evaluate` scores: a run directory (PyTorch), an export folder or an .onnx file (ONNX Runtime:
fp32, int8 or fp16), or a served endpoint (HTTP). Each turns one image into class probabilities, in
the order of its own labels, and is timed per image, decoding and preprocessing included.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.errors import ZooError
from zoo.metrics import softmax
from zoo.preprocess import ImageError

if TYPE_CHECKING:
    from zoo.hardware import Compute

RUN_FILES = ("config.json", "model.safetensors")


@dataclass
class Answer:
    probabilities: np.ndarray | None  # [C] in the target's label order; None when the image was refused
    seconds: float
    error: str | None = None
    ood: dict | None = None  # {"score", "threshold", "out_of_distribution"} when the target has an OOD summary


class Target:
    kind = ""
    name = ""
    labels: list[str] | None = None  # None: learnt from the first answer (a served model)
    run_config: dict[str, Any] | None = None  # the training run's config.json, when it can be found
    variant: str | None = None  # the variant that ran (fp32, int8, fp16), when the target says
    has_ood: bool | None = False  # whether answers carry the OOD field; None: known from the first answer

    def answer(self, path: Path) -> Answer:
        raise NotImplementedError

    @contextlib.contextmanager
    def pass_over(self, paths: Sequence[Path]) -> Iterator[None]:
        """Set up for one pass over these images; nothing, except for a run on a GPU (RunTarget)."""
        yield

    def timed(self, path: Path, call) -> Answer:
        """call() gives (probabilities, ood field or None); it is timed, and a refused image is counted."""
        tick = time.perf_counter()
        try:
            probs, ood = call()
        except (ImageError, ValueError) as e:  # a refused image is counted, not fatal
            return Answer(None, time.perf_counter() - tick, str(e))
        return Answer(np.asarray(probs, dtype=np.float64), time.perf_counter() - tick, ood=ood)


class RunTarget(Target):
    """A `zoo finetune` run directory, on PyTorch in fp32 (as training validates), on --device."""

    variant = "fp32"

    def __init__(self, run_dir: Path, device: str = "auto"):
        from zoo.hardware import resolve_device
        from zoo.run_dir import load_run

        self.device = resolve_device(device)  # a GPU the machine lacks is one sentence before the run is read
        self.run = load_run(run_dir)
        self.run.model.to(self.device)
        self.name, self.labels, self.run_config = str(run_dir), list(self.run.labels), self.run.config
        self.kind = f"run directory (PyTorch fp32, {self.device})"
        self.compute: Compute | None = None  # set by pass_over on a GPU

    @contextlib.contextmanager
    def pass_over(self, paths: Sequence[Path]) -> Iterator[None]:
        """On a GPU, the layout for these images' shapes (zoo.hardware.Compute.shaped_pass): one image a call
        at many sizes would otherwise spend its time on cuDNN plans, and the latency figures with it."""
        if self.device.type != "cuda":
            yield
            return
        from zoo.hardware import Compute

        shapes = [(1, *shape) for shape in map(self._shape, paths) if shape]
        with Compute(self.device, "fp32").shaped_pass(self.run.model, shapes) as self.compute:
            try:
                yield
            finally:
                self.compute = None

    def _shape(self, path: Path) -> tuple[int, int] | None:
        """(height, width) after preprocessing, from the image's header; None when it cannot be read."""
        from PIL import Image

        from zoo.preprocess import resized_shape

        try:
            with Image.open(path) as img:
                width, height = resized_shape(img.width, img.height, self.run.preprocess)
        except Exception:  # an unreadable image is refused, and counted, when it is scored
            return None
        return height, width

    def answer(self, path: Path) -> Answer:
        import torch

        from zoo.preprocess import preprocess

        def call() -> tuple[np.ndarray, None]:
            x = torch.from_numpy(preprocess(path, self.run.preprocess))[None]
            x = self.compute.batch(x) if self.compute else x.to(self.device)
            with torch.no_grad():
                logits = self.run.model(x).float().cpu()
            return softmax(logits.numpy())[0], None  # the OOD summary lives in the export, not the run

        return self.timed(path, call)


class OnnxTarget(Target):
    """An exported classifier on ONNX Runtime alone (zoo.edge), whatever its precision."""

    def __init__(self, model: Path, device: str = "auto"):
        from zoo.edge import EdgeError, EdgeModel

        try:
            self.edge = EdgeModel(model, kind="classifier", device=device)
        except EdgeError as e:
            raise ZooError(str(e)) from None
        self.name, self.labels = str(self.edge.path), list(self.edge.labels)
        # An export folder runs what its deploy.json names (fp32 after a fallback): the report names what ran.
        self.variant = self.edge.variant
        self.kind = f"ONNX Runtime {self.edge.provider} ({self.edge.path.name}, {self.variant})"
        self.run_config = _run_config_near(self.edge.path.parent)
        self.has_ood = self.edge.ood is not None

    def answer(self, path: Path) -> Answer:
        from zoo.preprocess import preprocess

        def call() -> tuple[np.ndarray, dict | None]:
            out = self.edge.run(preprocess(path, self.edge.preprocess)[None])
            probs = out["probabilities"][0] if "probabilities" in out else softmax(out[self.edge.output_names[0]])[0]
            ood = self.edge.ood.fields(out["features"], self.variant or "fp32")[0] if self.edge.ood else None
            return probs, ood

        return self.timed(path, call)


class ServedTarget(Target):
    """A model served over HTTP (TorchServe); asks for every class so the probabilities are complete."""

    kind = "served endpoint (HTTP, round trip)"
    has_ood = None  # the answers say

    def __init__(self, url: str, token: str | None, classes: list[str]):
        from zoo.serve import ServeClient

        # The server tells its labels only through its answers: they are checked against the folder's classes.
        self.client, self.name, self.labels = ServeClient(url, token=token), url, list(classes)

    def answer(self, path: Path) -> Answer:
        data = Path(path).read_bytes()
        labels = self.labels or []

        def call() -> tuple[np.ndarray, dict | None]:
            answer = self.client.classify(data, topk=len(labels))
            if set(answer) != set(labels):
                raise ZooError(f"{self.name} answers with labels ({', '.join(sorted(answer)[:5])}, ...) other than "
                               "the image folder's classes: give the image folder this model was trained on.")
            return np.array([answer[label] for label in labels]), self.client.ood

        return self.timed(path, call)


def _run_config_near(folder: Path) -> dict[str, Any] | None:
    """config.json of the run an export came from: export_report.json's run_dir, else the parent folder."""
    candidates = []
    report = folder / "export_report.json"
    if report.is_file():
        candidates.append(Path(json.loads(report.read_text()).get("run_dir", "")) / "config.json")
    candidates.append(folder.parent / "config.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    return None


def open_target(target: str, token: str | None, classes: list[str], device: str = "auto") -> Target:
    """The Target `target` names, on `device` (--device), or one sentence saying what a target can be."""
    if target.startswith(("http://", "https://")):
        from zoo.ort_device import check_local

        check_local(device)
        return ServedTarget(target, token, classes)
    path = Path(target)
    if path.is_dir() and (path / RUN_FILES[0]).is_file():
        return RunTarget(path, device)
    if (path.is_dir() and (path / "classifier.onnx").is_file()) or (path.is_file() and path.suffix == ".onnx"):
        return OnnxTarget(path, device)
    raise ZooError(f"{target} is not a run directory, an export folder, an .onnx file or a prediction URL: give one "
                   "of those (e.g. runs/photos, runs/photos/export, or http://127.0.0.1:8080/predictions/photos).")
