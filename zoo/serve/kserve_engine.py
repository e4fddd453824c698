"""zoo's KServe engine: an export folder served by KServe's ModelServer on ONNX Runtime, without TorchServe or Java.

`zoo serve start --engine kserve EXPORT_DIR` runs `python -m zoo.serve.kserve_engine STATE_DIR/kserve.json`
(zoo/serve/kserve_process.py). Each model is a `kserve.Model` whose answers come from zoo.edge.EdgeModel
(the variant deploy.json names, with its fp32 fallback) through one formatting function, v2.image_answer.
One port serves:

- POST /v2/models/NAME/infer: the Open Inference Protocol, JSON or binary tensor data (zoo/serve/v2.py).
  zoo reads these bodies itself before KServe's Model runs: KServe 0.21's own decoder answers 500 to BYTES
  elements that are not UTF-8 text (every JPEG) and to several malformed bodies, where a client's mistake
  must get a 4xx. The answer is KServe's InferResponse, JSON or binary as the request asks.
- POST /predictions/NAME: what zoo's TorchServe handlers accept (raw image bytes, multipart files, JSON
  base64, X-Topk), answered as they answer, so a client of the TorchServe engine works unchanged.
- KServe's own routes: /v2/health/live|ready, /v2/models/NAME[/ready] (metadata), /metrics.

There is no token: the server binds 127.0.0.1 unless told otherwise (kserve 0.21's ModelServer always
binds 0.0.0.0, so _ModelServer sets the address), and gRPC is off.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from kserve import Model, ModelServer
from kserve.errors import InvalidInput
from kserve.model_server import app as kserve_app
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

from zoo.edge import EdgeError, EdgeModel, EdgeResult
from zoo.handlers.zoo_requests import (
    SEND,
    RepeatedField,
    RequestError,
    check_pixel_budget,
    parse_request,
    topk_option,
)
from zoo.serve import v2
from zoo.serve.client import VARIANT_HEADER
from zoo.serve.kserve_process import engine_config

logger = logging.getLogger("zoo.serve.kserve_engine")
DEFAULT_TOPK = 5  # as the TorchServe archives (serving.json's default_topk); never more than the classes
GROUP = 8  # images of one shape per ONNX Runtime call, as the archives' max_group


class ZooModel(Model):
    """One graph of an export folder (classifier or features) as a KServe model."""

    def __init__(self, name: str, export_dir: Path, kind: str, pool: ThreadPoolExecutor, threads: int,
                 limits: v2.Limits, variant: str | None = None):
        super().__init__(name, return_response_headers=True)
        self.export_dir, self.kind, self.pool, self.threads, self.limits = Path(export_dir), kind, pool, threads, limits
        self.variant = variant  # None: the one deploy.json names
        self.edge: EdgeModel | None = None

    def load(self) -> bool:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.edge = EdgeModel(self.export_dir, kind=self.kind, options=options, variant=self.variant)
        self.ready = True
        return True

    @property
    def model(self) -> EdgeModel:
        assert self.edge is not None, "load() first"
        return self.edge

    def get_input_types(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]

    def get_output_types(self) -> list[dict]:
        if self.kind == "features":
            return [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}]
        return [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]

    def topk(self, value: Any) -> int:
        return topk_option(value, DEFAULT_TOPK, len(self.model.labels) or 1)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest) or len(payload.inputs) != 1:
            raise InvalidInput(f"{self.name} answers Open Inference Protocol requests with one input: POST "
                               f"/v2/models/{self.name}/infer.")
        unknown = [o.name for o in payload.request_outputs or [] if o.name not in v2.OUTPUTS[self.kind]]
        if unknown:
            raise RequestError(400, f'{self.name} has no output "{unknown[0][:40]}": ask for '
                                    f"{', '.join(v2.OUTPUTS[self.kind])}, or leave \"outputs\" out.")
        given = payload.inputs[0]
        tensor = v2.Tensor(given.name, given.datatype, given.shape, given.data)
        source = v2.request_images(tensor, self.limits) if tensor.datatype == "BYTES" \
            else v2.request_pixels(tensor, self.limits)
        params = payload.parameters or {}
        answers = await self.answer(source, self.topk(params.get("topk", (headers or {}).get("x-topk"))))
        if response_headers is not None:
            response_headers[VARIANT_HEADER] = self.model.variant
        outputs = [InferOutput(name, list(array.shape), datatype, data=array)
                   for name, datatype, array in v2.answer_tensors(answers)]
        binary = params.get("binary_data_output") is True
        return InferResponse(payload.id, self.name, outputs, use_binary_outputs=binary,
                             requested_outputs=payload.request_outputs)

    async def answer(self, source: list[bytes] | np.ndarray, k: int) -> list[dict]:
        """Each image's answer (v2.image_answer), computed in the inference pool off the event loop."""
        results = await asyncio.get_running_loop().run_in_executor(self.pool, self.results, source, k)
        return [v2.image_answer(r) for r in results]

    def results(self, source: list[bytes] | np.ndarray, k: int) -> list[EdgeResult]:
        """EdgeModel's results for encoded images or a preprocessed batch; a request whose image cannot be read or
        run is refused whole, as the TorchServe handlers refuse it."""
        edge = self.model
        try:
            if isinstance(source, np.ndarray):
                return edge.predict_batch(source, k) if self.kind == "classifier" else edge.features_batch(source)
            results = edge.predict(source, k, GROUP) if self.kind == "classifier" else edge.features(source, GROUP)
        except EdgeError:
            raise
        except Exception:  # ONNX Runtime refuses a shape it cannot run (a few pixels thin once resized)
            logger.warning("%s could not run a request", self.name, exc_info=True)
            raise RequestError(400, "The model cannot run on this input: send images (or pixels) less "
                                    "elongated or larger.") from None
        bad = [(j, r.error) for j, r in enumerate(results) if r.error]
        if bad:
            j, error = bad[0]
            raise RequestError(400, error if len(results) == 1 else f"Image {j + 1} of {len(results)}: {error}")
        return results


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(413, f"The body is larger than the limit of {limit / 1e6:.0f} MB: send fewer or smaller "
                                "images per request.")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def torchserve_fields(request: Request, body: bytes, limit: int) -> dict:
    """The request as TorchServe hands it to a handler: {"body": ...}, or one entry per multipart field, a name
    used more than once holding a RepeatedField; text/* bodies as text."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("text/"):
        try:
            return {"body": body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"body": body}
    if not content_type.startswith("multipart/form-data"):
        return {"body": body}

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_part_size=limit)
    fields: dict[str, RepeatedField] = {}
    try:
        for name, value in form.multi_items():
            fields.setdefault(name, RepeatedField()).append(value if isinstance(value, str) else await value.read())
    finally:
        await form.close()
    return {name: values if len(values) > 1 else values[0] for name, values in fields.items()}


def _refusal(error: Exception, torchserve: bool) -> JSONResponse:
    status = getattr(error, "status", 400)
    if torchserve:  # the TorchServe handlers' shape
        return JSONResponse({"code": status, "type": "InvalidInput", "message": str(error)}, status_code=status)
    return JSONResponse({"error": str(error)}, status_code=status)  # the Open Inference Protocol's shape


def register_routes(app: FastAPI, models: dict[str, ZooModel], limits: v2.Limits) -> None:
    """zoo's two inference routes, ahead of KServe's own (the first route that matches a path answers)."""

    async def v2_infer(request: Request, model_name: str) -> Response:
        model = models.get(model_name)
        if model is None:
            return JSONResponse({"error": f"No model {model_name!r} here: the models are {', '.join(models)}."},
                                status_code=404)
        try:
            parsed = await _read_v2(request, limits)
            response, headers = await model(_infer_request(model_name, parsed), headers=dict(request.headers))
            body, json_length = response.to_rest()
        except (RequestError, InvalidInput) as e:
            return _refusal(e, torchserve=False)
        if isinstance(body, bytes):
            headers.update({v2.HEADER_LENGTH: str(json_length), "Content-Type": "application/octet-stream"})
            return Response(body, headers=headers)
        return JSONResponse(body, headers=headers)

    async def predictions(request: Request, model_name: str) -> Response:
        model = models.get(model_name)
        if model is None:
            return JSONResponse({"code": 404, "type": "ModelNotFoundException",
                                 "message": f"Model not found: {model_name}"}, status_code=404)
        try:
            answer = await _torchserve_answer(request, model, limits)
        except RequestError as e:
            return _refusal(e, torchserve=True)
        return JSONResponse(answer, headers={VARIANT_HEADER: model.model.variant})

    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        app.add_api_route(path, v2_infer, methods=["POST"], include_in_schema=False)
    app.add_api_route("/predictions/{model_name}", predictions, methods=["POST"], include_in_schema=False)


async def _read_v2(request: Request, limits: v2.Limits) -> v2.V2Request:
    body = await read_body(request, limits.max_body_bytes)
    try:
        return v2.parse_request(body, request.headers.get(v2.HEADER_LENGTH))
    except RequestError:
        raise
    except Exception as e:  # a reader's bug on odd bytes is still that request's problem, never a 500
        logger.warning("Could not read a v2 request", exc_info=True)
        raise RequestError(400, f"The request could not be read ({type(e).__name__}): {v2.SEND}.") from None


def _infer_request(model_name: str, parsed: v2.V2Request) -> InferRequest:
    t = parsed.tensor
    wanted = [RequestedOutput(o["name"], o.get("parameters") if isinstance(o.get("parameters"), dict) else None)
              for o in parsed.outputs] if parsed.outputs else None
    return InferRequest(model_name, [InferInput(t.name, t.shape, t.datatype, data=t.data)], request_id=parsed.id,
                        parameters=parsed.parameters, request_outputs=wanted)


async def _torchserve_answer(request: Request, model: ZooModel, limits: v2.Limits) -> Any:
    """What the TorchServe handler answers: one image's answer, or a list when several were sent, in the
    handlers' shape: {label: probability, ..., "ood": {...}} (the OOD check when the export has one), or the vector."""
    try:
        body = await read_body(request, limits.max_body_bytes)
        parsed = parse_request(await torchserve_fields(request, body, limits.max_body_bytes), limits.max_images)
    except RequestError:
        raise
    except Exception as e:  # whatever an odd request triggers (a broken multipart body) stays with that request
        raise RequestError(400, f"The request could not be read ({type(e).__name__}): {SEND}.") from None
    k = DEFAULT_TOPK
    if model.kind == "classifier":
        k = model.topk(parsed.options.get("topk", request.headers.get("x-topk")))
    check_pixel_budget(parsed.images, limits.pixel_budget)
    answers = [_torchserve_shape(a) for a in await model.answer(parsed.images, k)]
    return answers if parsed.many else answers[0]


def _torchserve_shape(answer: dict) -> Any:
    if "features" in answer:
        return np.asarray(answer["features"]).tolist()
    out = dict(answer["top_k"])
    if answer.get("ood") is not None:
        out["ood"] = answer["ood"]
    return out


class _ModelServer(ModelServer):
    """KServe's ModelServer, bound to `host`: kserve 0.21 builds its REST server for 0.0.0.0, and the
    address can be set between building it and binding, which setup_event_loop sits between."""

    def __init__(self, host: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.bind_host = host

    def setup_event_loop(self) -> None:
        config = getattr(getattr(self, "_rest_server", None), "config", None)
        if config is None:
            raise RuntimeError("this kserve's ModelServer has no REST server config to bind: install kserve 0.21.")
        config.host = self.bind_host
        super().setup_event_loop()


def main(config_file: str) -> None:
    """Serve what config_file says (`zoo serve start --engine kserve` writes one; a container gets its own), until
    SIGTERM."""
    try:
        cfg = engine_config(json.loads(Path(config_file).read_text()))
    except (OSError, ValueError, TypeError) as e:
        print(f"zoo: {config_file} is not an engine configuration ({e}): see `zoo serve start --engine kserve`.",
              file=sys.stderr, flush=True)
        sys.exit(2)
    limits = v2.Limits(**cfg["limits"])
    pool = ThreadPoolExecutor(cfg["workers"], thread_name_prefix="zoo-inference")
    models = {name: ZooModel(name, Path(cfg["export_dir"]), kind, pool, cfg["threads"], limits, cfg["variant"])
              for name, kind in cfg["models"].items()}
    try:
        for model in models.values():
            model.load()
    except EdgeError as e:
        print(f"zoo: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    for model in models.values():
        logger.info("zoo %s model %s ready: %s variant on %s", model.kind, model.name, model.model.variant,
                    model.model.provider)
    register_routes(kserve_app, models, limits)
    server = _ModelServer(cfg["host"], http_port=cfg["port"], enable_grpc=False, workers=1, enable_docs_url=False)
    server.start(list(models.values()))


if __name__ == "__main__":
    main(sys.argv[1])
