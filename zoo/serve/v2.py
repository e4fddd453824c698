"""The Open Inference Protocol ("v2": KServe, Triton) over HTTP, as zoo's KServe engine reads and writes it.

numpy and the standard library only: the engine (zoo/serve/kserve_engine.py) reads requests with it,
`zoo predict --server` writes them with it, and the tests fuzz it without a server.

A request (POST /v2/models/NAME/infer) holds ONE input tensor, told apart by its datatype:
- BYTES, N elements in any shape ([N] or [N, 1]): encoded images (JPEG, PNG, WebP, BMP, GIF, TIFF).
  In a JSON body each element is the image's base64 text (the convention KServe's examples use, since
  JSON strings cannot carry raw bytes); with the binary tensor data extension each element is a 4-byte
  little-endian length and the raw bytes, as the protocol lays out BYTES tensors.
- FP32 [N, 3, H, W]: images already preprocessed as the export's preprocess.json says (zoo.preprocess).
The binary extension: the JSON header, its length in the Inference-Header-Content-Length header, then each
input's `binary_data_size` bytes in order. Request parameters: `topk` (default 5, at most the classes).

Refusals are zoo_requests.RequestError: a 4xx status and one sentence that names what was received.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.handlers.zoo_requests import DEFAULT_PIXEL_BUDGET, RequestError, check_pixel_budget, decode_base64

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = ("BYTES", "FP32")
SEND = ('send {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [BASE64]}]}, '
        "or FP32 pixels [N, 3, H, W]")
OUTPUTS = {"classifier": ("labels", "probabilities", "ood_score", "ood_threshold", "out_of_distribution"),
           "features": ("features",)}  # what answer_tensors may name; the ood_* ones when the export checks OOD
MAX_ELEMENTS = 64_000_000  # what a shape may claim before any data is read (a 32 MB body holds 8M floats)


@dataclass(frozen=True)
class Limits:
    """What one request may hold; the same defaults as the TorchServe archives (export/archive.py)."""

    max_images: int = 32
    pixel_budget: int = DEFAULT_PIXEL_BUDGET
    max_body_bytes: int = 32 * 1024 * 1024


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: Any  # BYTES: list[bytes]; FP32: np.ndarray of `shape`


@dataclass
class V2Request:
    tensor: Tensor
    parameters: dict = field(default_factory=dict)
    outputs: list[dict] | None = None  # the "outputs" the request asked for, as sent
    id: str | None = None


def _shown(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if _jsonable(value) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (isinstance(value, list) and len(value) < 8)


def _load_json(text: bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = f"{e.msg} at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) \
            else type(e).__name__
        raise RequestError(400, f"The {what} is not valid JSON ({reason}): {SEND}.") from None


def parse_request(body: bytes, header_length: str | None = None) -> V2Request:
    """One inference request, a JSON body or a JSON header plus binary data; refused with one sentence."""
    if not body:
        raise RequestError(400, f"The request is empty: {SEND}.")
    end = len(body)
    if header_length is not None:
        text = header_length.strip()
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= len(body):  # "²".isdigit() is True
            raise RequestError(400, f"{HEADER_LENGTH} is {_shown(header_length)!r} for a body of {len(body)} "
                                    "bytes: give the length of the JSON header that starts the body.")
        end = int(text)
    obj = _load_json(body[:end], "request" if header_length is None else "JSON header")
    if not isinstance(obj, dict):
        raise RequestError(400, f"The request is {_kind(obj)}, not a JSON object: {SEND}.")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, f'The request has no "inputs" list of tensors: {SEND}.')
    if len(inputs) != 1:
        raise RequestError(400, f"The request has {len(inputs)} input tensors: send one, BYTES images or FP32 "
                                "pixels [N, 3, H, W].")
    tensor, used = _tensor(inputs[0], body, end)
    if end + used != len(body):
        raise RequestError(400, f"The body holds {len(body) - end - used} bytes after the JSON header and the "
                                "binary data its inputs declare: send each input's binary_data_size bytes, "
                                "nothing more.")
    return V2Request(tensor, _object(obj, "parameters"), _outputs(obj.get("outputs")), _request_id(obj.get("id")))


def _kind(value: Any) -> str:
    names = {bool: "true or false", int: "a number", float: "a number", type(None): "null", dict: "an object",
             list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _object(obj: dict, key: str) -> dict:
    value = obj.get(key) or {}
    if not isinstance(value, dict):
        raise RequestError(400, f'"{key}" is {_kind(value)}: give an object, e.g. {{"topk": 3}}.')
    return value


def _request_id(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f'"id" is {_kind(value)}: give a string or leave it out.')
    return value


def _outputs(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in value):
        raise RequestError(400, '"outputs" must be a list of {"name": NAME} objects: name the outputs you want, '
                                "or leave it out for all of them.")
    return value


def _spec(entry: Any) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of an input, checked before its data is read."""
    if not isinstance(entry, dict):
        raise RequestError(400, f"The input is {_kind(entry)}, not a tensor object: {SEND}.")
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str):
        raise RequestError(400, f'The input\'s "name" is {_kind(name)}: give it a string, e.g. "image".')
    if datatype not in DATATYPES:
        raise RequestError(400, f'The input "{_shown(name)}" has datatype {_shown(datatype)}: send BYTES (encoded '
                                "images) or FP32 (preprocessed pixels [N, 3, H, W]).")
    if not (isinstance(shape, list) and shape and all(type(d) is int and d >= 0 for d in shape)):
        raise RequestError(400, f'The input "{_shown(name)}" has shape {_shown(shape)}: give a list of whole '
                                "numbers, e.g. [1] for one image.")
    if math.prod(shape) > MAX_ELEMENTS:
        raise RequestError(413, f'The input "{_shown(name)}" declares shape {shape}, more than {MAX_ELEMENTS:,} '
                                "elements: send fewer or smaller images per request.")
    return name, datatype, shape


def _tensor(entry: Any, body: bytes, start: int) -> tuple[Tensor, int]:
    """The input and how many binary bytes after the header it used."""
    name, datatype, shape = _spec(entry)
    params = entry.get("parameters") or {}
    count = math.prod(shape)
    where = f'The input "{_shown(name)}"'
    data: list[bytes] | np.ndarray
    if "data" in entry:
        read = _bytes_from_json if datatype == "BYTES" else _pixels_from_json
        data = read(entry["data"], where)
        used = 0
    else:
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if type(size) is not int or size < 0:
            raise RequestError(400, f'{where} has no "data" and no binary_data_size parameter: put its elements '
                                    'in "data", or its bytes after the JSON header with binary_data_size.')
        if start + size > len(body):
            raise RequestError(400, f"{where} declares {size} bytes of binary data but the body holds "
                                    f"{len(body) - start} after the JSON header: send the whole tensor.")
        raw = body[start:start + size]
        data = _bytes_from_binary(raw, where) if datatype == "BYTES" else _pixels_from_binary(raw, where)
        used = size
    if len(data) != count:
        raise RequestError(400, f"{where} holds {len(data)} elements but its shape {shape} needs {count}: make "
                                "the shape and the data agree.")
    return Tensor(name, datatype, shape, data.reshape(shape) if isinstance(data, np.ndarray) else data), used


def _flat(value: Any) -> list:
    if not isinstance(value, list):
        return [value]
    return [x for item in value for x in _flat(item)]


def _bytes_from_json(data: Any, where: str) -> list[bytes]:
    try:
        items = _flat(data)
    except RecursionError:
        raise RequestError(400, f"{where}'s data is nested too deeply: give a list of base64 strings.") from None
    odd = next((i for i, x in enumerate(items) if not isinstance(x, str)), None)
    if odd is not None:
        raise RequestError(400, f"Element {odd} of {where[4:]} is {_kind(items[odd])}: BYTES data in JSON is one "
                                "base64 string per image.")
    return [decode_base64(x, f"Element {i} of {where[4:]}") for i, x in enumerate(items)]


def _pixels_from_json(data: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, RecursionError):  # ragged lists, or nested too deeply: refused below by the dtype
        array = np.asarray([], dtype=object)
    if array.dtype.kind not in "iuf":
        raise RequestError(400, f"{where} is FP32 but its data is not a (nested) list of numbers: send the "
                                "preprocessed pixels as numbers.")
    return _finite(array.astype(np.float32).reshape(-1), where)


def _pixels_from_binary(raw: bytes, where: str) -> np.ndarray:
    if len(raw) % 4:
        raise RequestError(400, f"{where} has {len(raw)} bytes of FP32 data, not a multiple of 4: send "
                                "little-endian 32-bit floats.")
    return _finite(np.frombuffer(raw, dtype="<f4").astype(np.float32), where)


def _finite(array: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise RequestError(400, f"{where} holds NaN or infinite values: send finite preprocessed pixels.")
    return array


def _bytes_from_binary(raw: bytes, where: str) -> list[bytes]:
    """BYTES elements as the protocol lays them out: a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(400, f"{where}'s binary data ends inside an element's 4-byte length: send each "
                                    "image as its length (4 bytes, little-endian) and its bytes.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise RequestError(400, f"Element {len(items)} of {where[4:]} declares {length} bytes but "
                                    f"{len(raw) - offset} remain: send each image's true length.")
        items.append(raw[offset:offset + length])
        offset += length
    return items


def request_images(tensor: Tensor, limits: Limits) -> list[bytes]:
    """The encoded images of a BYTES input, within the limits on count and total pixels."""
    if len(tensor.data) > limits.max_images:
        raise RequestError(413, f"The request holds {len(tensor.data)} images, more than the limit of "
                                f"{limits.max_images}: split it.")
    if not tensor.data:
        raise RequestError(400, "The request holds no image: send at least one.")
    check_pixel_budget(tensor.data, limits.pixel_budget)
    return tensor.data


def request_pixels(tensor: Tensor, limits: Limits) -> np.ndarray:
    """The preprocessed batch of an FP32 input: [N, 3, H, W] within the limits on count and total pixels."""
    shape = tensor.shape
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise RequestError(400, f"The FP32 input has shape {shape}: send preprocessed pixels [N, 3, H, W] with "
                                "N, H and W at least 1.")
    n, _, h, w = shape
    if n > limits.max_images:
        raise RequestError(413, f"The request holds {n} images, more than the limit of {limits.max_images}: "
                                "split it.")
    if n * h * w > limits.pixel_budget:
        raise RequestError(413, f"The request's {n} images hold {n * h * w / 1e6:.0f} Mpixel, more than the limit "
                                f"of {limits.pixel_budget / 1e6:.0f} Mpixel per request: send fewer or smaller "
                                "images per request.")
    return np.ascontiguousarray(tensor.data, dtype=np.float32)


def image_answer(result: Any) -> dict:
    """One image's answer on every route of the KServe engine, made from zoo.edge's EdgeResult alone.

    {"top_k": {label: probability}} from a classifier, {"features": vector} from a feature extractor; the
    out-of-distribution check goes along as "ood" ({"score", "threshold", "out_of_distribution"}) when the
    result carries one.
    """
    answer: dict[str, Any] = ({"features": np.asarray(result.features, dtype=np.float32)}
                              if result.features is not None else {"top_k": dict(result.top_k)})
    ood = getattr(result, "ood", None)
    if ood is not None:
        answer["ood"] = ood
    return answer


def answer_tensors(answers: list[dict]) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, array) of the response's outputs: labels BYTES [N, k] and probabilities FP32 [N, k], most
    probable first (or features FP32 [N, D]); ood_score, ood_threshold and out_of_distribution [N] with "ood"."""
    if "features" in answers[0]:
        return [("features", "FP32", np.stack([a["features"] for a in answers]))]
    labels = np.array([list(a["top_k"]) for a in answers], dtype=object)
    probs = np.array([list(a["top_k"].values()) for a in answers], dtype=np.float32)
    out = [("labels", "BYTES", labels), ("probabilities", "FP32", probs)]
    if all("ood" in a for a in answers):
        out += [("ood_score", "FP32", np.array([a["ood"]["score"] for a in answers], dtype=np.float32)),
                ("ood_threshold", "FP32", np.array([a["ood"]["threshold"] for a in answers], dtype=np.float32)),
                ("out_of_distribution", "BOOL", np.array([a["ood"]["out_of_distribution"] for a in answers],
                                                         dtype=bool))]
    return out


def encode_images(images: list[bytes], topk: int | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a request for encoded images in the binary tensor data extension: no base64."""
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header: dict[str, Any] = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": len(raw)}}]}
    if topk is not None:
        header["parameters"] = {"topk": topk}
    head = json.dumps(header).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def read_answers(body: Any) -> list:
    """Per image, {label: probability} (labels and probabilities outputs), followed by "ood" when the
    ood_* outputs are there, or the features vector, from a JSON response; ValueError when it holds neither."""
    outputs = {o.get("name"): o for o in body.get("outputs", []) if isinstance(o, dict)} \
        if isinstance(body, dict) else {}

    def rows(name: str) -> list:
        out = outputs[name]
        return np.asarray(out["data"], dtype=object).reshape(out["shape"]).tolist()

    if "features" in outputs:
        return [np.asarray(v, dtype=np.float64).tolist() for v in rows("features")]
    if "labels" in outputs and "probabilities" in outputs:
        answers: list[dict] = [{str(k): float(p) for k, p in zip(ks, ps, strict=True)}
                               for ks, ps in zip(rows("labels"), rows("probabilities"), strict=True)]
        if all(name in outputs for name in ("ood_score", "ood_threshold", "out_of_distribution")):
            # the handlers' shape: the labels, then "ood" (zoo.serve.client.split_ood reads both engines alike)
            checks = zip(rows("ood_score"), rows("ood_threshold"), rows("out_of_distribution"), strict=True)
            for answer, (score, threshold, flagged) in zip(answers, checks, strict=True):
                answer["ood"] = {"score": float(score), "threshold": float(threshold),
                                 "out_of_distribution": bool(flagged)}
        return answers
    raise ValueError("the response has neither labels and probabilities nor features outputs")
