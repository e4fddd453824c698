"""What the zoo classifier and features handlers share: reading requests, running images, answering.

This file travels inside every zoo archive (.mar) beside zoo_requests.py (reading requests),
zoo_preprocess.py and zoo_inference.py, copies of zoo/preprocess.py and zoo/inference.py, and
serving.json, which names the runtime and the model file. It imports only numpy, Pillow and
onnxruntime or torch: never the `zoo` package, which a server need not have.

TorchServe may hand one call several requests (batching). Each request is answered on its own:
a bad image gets a 4xx for that request only, and images run alone or with images of the same
shape, so an answer never depends on what else arrived in the batch.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import zoo_inference
import zoo_preprocess as pp
from zoo_requests import (
    DEFAULT_PIXEL_BUDGET,
    SEND,
    ParsedRequest,
    RequestError,
    check_pixel_budget,
    keep_repeated_fields,
    parse_request,
    request_header,
    topk_option,
)

__all__ = ["ParsedRequest", "RequestError", "ZooImageHandler", "parse_request", "request_header", "topk_option"]

logger = logging.getLogger(__name__)

SETTINGS = "serving.json"
PREPROCESS = "preprocess.json"
LABELS = "labels.json"
THREADS_ENV = "ZOO_SERVE_THREADS"  # set by `zoo serve start`: intra-op threads per worker
VARIANT_HEADER = "X-Zoo-Variant"  # every answer names the variant that computed it


REASONS = {400: "Bad Request", 413: "Payload Too Large"}


def _threads() -> int:
    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


class OnnxRuntimeModel:
    """One ONNX graph run by ONNX Runtime; returns the named output, and the `extra` one when asked for.

    The deployed variant falls back to the fp32 graph, with one warning, when it cannot load here.
    """

    def __init__(self, path: Path, output: str, gpu_id: int | None, fallback: Path | None = None,
                 variant: str = "fp32", extra: str | None = None):
        # The GPU TorchServe gave this worker, when it gave one and this onnxruntime has CUDA; else the CPU.
        on_gpu = gpu_id is not None and zoo_inference.CUDA in zoo_inference.available_providers()
        self.session, ran = zoo_inference.open_deployed(
            path, fallback, [zoo_inference.CUDA if on_gpu else zoo_inference.CPU], threads=_threads(),
            inter_op_threads=1, device_id=int(gpu_id) if on_gpu and gpu_id is not None else None)
        self.variant = "fp32" if fallback is not None and ran == fallback else variant
        self.input = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.has_extra = extra is not None and extra in names  # a graph exported without it: no extra
        self.outputs = [output] + ([extra] if extra is not None and self.has_extra else [])
        self.where = self.session.get_providers()[0]  # logged at start: which provider really runs
        shape = next((o.shape for o in self.session.get_outputs() if o.name == output), None)
        self.width = shape[-1] if shape and isinstance(shape[-1], int) else None  # classes, when the graph says

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input: batch})


class TorchProgramModel:
    """A torch.export program (.pt2) with dynamic batch, height and width; returns output number `output`
    (and number `extra` when asked for: zoo's program returns (probabilities, features))."""

    def __init__(self, path: Path, output: int, gpu_id: int | None, extra: int | None = None):
        import torch

        if _threads():
            torch.set_num_threads(_threads())
        self.torch = torch
        self.device = torch.device(f"cuda:{gpu_id}" if gpu_id is not None and torch.cuda.is_available() else "cpu")
        self.module = torch.export.load(str(path)).module().to(self.device)
        self.outputs = [int(output)] + ([int(extra)] if extra is not None else [])
        self.has_extra = extra is not None
        self.where = str(self.device)
        self.variant = "fp32"  # the torch program is the fp32 model

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        with self.torch.inference_mode():
            out = self.module(self.torch.from_numpy(batch).to(self.device))
        return [out[i].float().cpu().numpy() for i in self.outputs]


RUNTIMES = {"onnx": OnnxRuntimeModel, "torch": TorchProgramModel}


def open_model(model_dir: Path, settings: dict, gpu_id: int | None, extra=None):
    """The model serving.json names: its deployed variant, with the fp32 file as the fallback (onnx runtime).

    `extra` names a second output to return with the first (the pooled features the OOD score reads)."""
    path = model_dir / settings["model_file"]
    if settings["runtime"] != "onnx":
        return RUNTIMES[settings["runtime"]](path, settings["output"], gpu_id, extra=extra)
    fallback = settings.get("fallback_file")
    return OnnxRuntimeModel(path, settings["output"], gpu_id, fallback=model_dir / fallback if fallback else None,
                            variant=settings.get("variant", "fp32"), extra=extra)


def open_ood(model_dir: Path, settings: dict, labels: list):
    """The archive's OOD summary (zoo_inference.OodScorer), or None, said once, for an archive without one.

    A damaged file stops the model from loading with one sentence in the log (zoo_inference.OodError)."""
    name = settings.get("ood_file")
    if not name or "ood" in labels:
        logger.info("zoo: this archive holds no OOD summary (exported before zoo wrote ood.npz, or without the "
                    "run's images): answers carry no ood field")
        return None
    return zoo_inference.OodScorer.load(model_dir / name)


class ZooImageHandler:
    """initialize -> handle; subclasses say only how one image's outputs become its answer.

    Each image's outputs are a tuple: the model's output, then (with `uses_ood` and an OOD summary in
    the archive) its pooled features, which `self.ood` scores.
    """

    uses_ood = False

    def __init__(self):
        self.initialized = False

    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = Path(props.get("model_dir") or ".")
        self.settings = json.loads((model_dir / SETTINGS).read_text())
        self.preprocess = pp.PreprocessConfig.load(model_dir / PREPROCESS)
        self.labels = json.loads((model_dir / LABELS).read_text())
        self.max_images = int(self.settings.get("max_images_per_request", 32))
        self.group_size = int(self.settings.get("max_group", 8))
        self.pixel_budget = int(self.settings.get("max_pixels_per_request", DEFAULT_PIXEL_BUDGET))
        keep_repeated_fields()  # every file of a repeated multipart field name is answered, not just the last
        self.ood = open_ood(model_dir, self.settings, self.labels) if self.uses_ood else None
        self.model = open_model(model_dir, self.settings, props.get("gpu_id"),
                                self.settings.get("ood_output") if self.ood is not None else None)
        if self.ood is not None and not self.model.has_extra:
            logger.warning("zoo: %s has no features output, so answers carry no ood field: re-export the model",
                           self.settings["model_file"])
            self.ood = None
        self.variant = self.model.variant  # what really loaded: the deployed variant, or fp32 after a fallback
        width = getattr(self.model, "width", None)
        if self.settings["kind"] == "classifier" and width is not None and width != len(self.labels):
            raise ValueError(f"labels.json names {len(self.labels)} classes but {self.settings['model_file']} has "
                             f"{width} outputs: re-export the model with `zoo export` so they match.")
        self.initialized = True
        logger.info("zoo %s handler ready: %s runtime on %s, %s variant, %d labels%s", self.settings["kind"],
                    self.settings["runtime"], self.model.where, self.variant, len(self.labels),
                    "" if self.ood is None else f", OOD threshold {self.ood.threshold(self.variant):.4f}")

    def answer(self, outputs: list[tuple[np.ndarray, ...]], request: ParsedRequest):
        """The JSON answer of one request from the model outputs of each of its images."""
        raise NotImplementedError

    def handle(self, data: list[dict], context) -> list[str]:
        responses: dict[int, str] = {}  # request index -> answer; every request gets one
        parsed: dict[int, ParsedRequest] = {}
        tensors: dict[int, list[np.ndarray]] = {}
        for idx, request in enumerate(data):
            try:
                parsed[idx] = parse_request(request or {}, self.max_images)
                self.check_options(parsed[idx], context, idx)
                check_pixel_budget(parsed[idx].images, self.pixel_budget)
                tensors[idx] = self.to_tensors(parsed[idx].images)
            except RequestError as e:
                responses[idx] = self.refuse(context, idx, e)
                tensors.pop(idx, None)
            except Exception as e:  # whatever an odd request triggers stays with that request
                logger.warning("Could not read request %d", idx, exc_info=True)
                responses[idx] = self.refuse(context, idx, RequestError(
                    400, f"The request could not be read ({type(e).__name__}): {SEND}."))
                tensors.pop(idx, None)
        outputs, failed = self.run_grouped(tensors)
        for idx, error in failed.items():
            responses[idx] = self.refuse(context, idx, error)
        logger.info("zoo batch: %d request(s), %d refused, %d image(s) in %d shape group(s)", len(data),
                    len(data) - len(outputs), sum(len(t) for t in tensors.values()),
                    len({a.shape for t in tensors.values() for a in t}))
        for idx, answers in outputs.items():
            context.set_response_content_type(idx, "application/json")
            context.set_response_header(idx, VARIANT_HEADER, self.variant)
            responses[idx] = json.dumps(self.answer(answers, parsed[idx]))
        return [responses[idx] for idx in range(len(data))]

    def check_options(self, request: ParsedRequest, context, idx: int) -> None:
        """Refuse bad options before any image is decoded."""

    def to_tensors(self, images: list[bytes]) -> list[np.ndarray]:
        """Every image of one request; a bad one refuses the request with a message that says which it was."""
        out = []
        for j, image in enumerate(images):
            try:
                out.append(self.to_tensor(image))
            except RequestError as e:
                if len(images) == 1:
                    raise
                raise RequestError(e.status, f"Image {j + 1} of {len(images)}: {e}") from None
        return out

    def to_tensor(self, image: bytes) -> np.ndarray:
        try:
            return pp.preprocess(image, self.preprocess)
        except pp.ImageError as e:
            raise RequestError(400, str(e)) from None
        except Exception as e:  # a decoder bug triggered by odd bytes: still this request's problem only
            logger.warning("Could not decode an image", exc_info=True)
            raise RequestError(400, f"The image could not be decoded ({type(e).__name__}): send a valid JPEG, PNG, "
                                    "WebP, BMP, GIF or TIFF file.") from None

    def run_grouped(self, tensors: dict[int, list[np.ndarray]]) -> tuple[dict, dict[int, RequestError]]:
        """Run images in groups of one shape, at most group_size at a time; same order back per request.

        A group the model cannot run is retried image by image, so only the requests whose own
        image fails get an error (e.g. a 2000x8 strip, a few pixels thin after resizing).
        """
        members = [(idx, j) for idx, arrays in tensors.items() for j in range(len(arrays))]
        out = {idx: [None] * len(arrays) for idx, arrays in tensors.items()}
        failed: dict[int, RequestError] = {}
        for group in zoo_inference.same_shape_groups([tensors[i][j] for i, j in members], self.group_size):
            for i, j in self._run([members[m] for m in group], tensors, out):
                shape = tensors[i][j].shape
                failed[i] = RequestError(400, f"The model cannot run on this image once resized to "
                                              f"{shape[2]}x{shape[1]} pixels: send a less elongated image.")
        return {i: v for i, v in out.items() if i not in failed}, failed

    def _run(self, chunk: list[tuple[int, int]], tensors: dict, out: dict) -> list[tuple[int, int]]:
        """Fill out[i][j] for the chunk; returns the members that failed even when run alone."""
        try:
            result = self.model(np.stack([tensors[i][j] for i, j in chunk]))
        except Exception:
            if len(chunk) == 1:
                logger.warning("The model failed on a %s input", tensors[chunk[0][0]][chunk[0][1]].shape,
                               exc_info=True)
                return chunk
            return [m for member in chunk for m in self._run([member], tensors, out)]
        for row, (i, j) in enumerate(chunk):
            out[i][j] = tuple(np.asarray(r[row], dtype=np.float32) for r in result)
        return []

    @staticmethod
    def refuse(context, idx: int, error: RequestError) -> str:
        context.set_response_status(error.status, REASONS.get(error.status, "Bad Request"), idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps({"code": error.status, "type": "InvalidInput", "message": str(error)})
