"""Reading one request: every way an image can be sent, and a one-sentence refusal for everything else.

This file travels inside every zoo archive beside zoo_serving.py and imports only the standard
library and Pillow. Each refusal names what was received and what to send instead; nothing here
echoes the bytes of a body back.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field

from PIL import Image

OPTION_NAMES = ("topk",)  # request parameters that are options, not images
SEND = "send image bytes with Content-Type application/octet-stream, or JSON {\"image\": BASE64}"
DEFAULT_PIXEL_BUDGET = 128_000_000  # about ten 12-Mpixel photos, about a second of decoding on one core


class RequestError(Exception):
    """A request the handler refuses; the message is one sentence that says what to send instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RepeatedField(list):
    """The values of a form field name a multipart upload used more than once (curl -F file=@a -F file=@b)."""

    repeated_field = True  # recognised by this mark: each staged archive folder imports its own copy of this class


def _repeated(value) -> bool:
    return isinstance(value, list) and getattr(value, "repeated_field", False)


@dataclass
class ParsedRequest:
    images: list[bytes]
    many: bool  # answer with a list (the request sent a list or several files) or a single object
    options: dict = field(default_factory=dict)


def _kind(value) -> str:
    """What a JSON value is, in words, for a refusal."""
    names = {bool: "true or false", int: "a number", float: "a number", type(None): "null", dict: "an object",
             list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def decode_base64(text: str, where: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64 ({len(text)} characters): send base64-encoded "
                                "image bytes.") from None


def _from_json(obj, options: dict) -> tuple[list[bytes], bool]:
    """JSON forms: {"image": B64}, {"images": [B64, ...]}, [B64, ...] or a bare B64 string."""
    if isinstance(obj, str):
        return [decode_base64(obj, "The JSON string")], False
    if isinstance(obj, list):
        odd = [i for i, x in enumerate(obj) if not isinstance(x, str)]
        if odd:
            raise RequestError(400, f"Item {odd[0]} of the JSON list is {_kind(obj[odd[0]])}: the list must hold "
                                    "base64 strings, one per image.")
        return [decode_base64(x, f"Image {i} of the JSON list") for i, x in enumerate(obj)], True
    if isinstance(obj, dict):
        for name in OPTION_NAMES:
            if name in obj:
                options[name] = obj[name]
        if "image" in obj:
            if not isinstance(obj["image"], str):
                raise RequestError(400, f'The JSON key "image" holds {_kind(obj["image"])}: give it a base64 string.')
            return [decode_base64(obj["image"], 'The JSON key "image"')], False
        if "images" in obj:
            if not isinstance(obj["images"], list):
                raise RequestError(400, f'The JSON key "images" holds {_kind(obj["images"])}: give it a list of '
                                        "base64 strings.")
            return _from_json(obj["images"], options)[0], True
        keys = ", ".join(sorted(map(str, obj))[:5]) or "none"
        raise RequestError(400, f'The JSON object has no "image" or "images" key (keys: {keys}): send '
                                '{"image": BASE64} or {"images": [BASE64, ...]}.')
    raise RequestError(400, f'The JSON is {_kind(obj)}, not an image: send {{"image": BASE64}} or '
                            '{"images": [BASE64, ...]}.')


def _looks_like_json(head: bytes) -> bool:
    return head[:64].lstrip()[:1] in (b"{", b"[", b'"')


def _parse_json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"The body starts like JSON but is not valid JSON ({e.msg} at line {e.lineno}, "
                                f"column {e.colno}): fix the JSON, or {SEND}.") from None
    except RecursionError:
        raise RequestError(400, f"The JSON is nested too deeply to read: {SEND}.") from None


def _from_text(text: str) -> list[bytes]:
    """A text body (TorchServe decodes text/* bodies): a bare base64 image, or a mistake worth naming."""
    if not text.strip():
        return [b""]  # the image decoder says "empty"
    try:
        return [decode_base64(text, "The text body")]
    except RequestError:
        raise RequestError(400, f"The body is {len(text)} characters of text, not an image or base64: "
                                f"{SEND}.") from None


def _one_part(value, options: dict) -> tuple[list[bytes], bool]:
    """The images of one body or form part, whatever TorchServe made of it (bytes, str or parsed JSON)."""
    if isinstance(value, (bytes, bytearray)):
        if not _looks_like_json(bytes(value[:64])):
            return [bytes(value)], False
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return [bytes(value)], False  # binary that happens to start with a brace: the decoder will say
        return _from_json(_parse_json(text), options)
    if isinstance(value, str):
        if _looks_like_json(value[:64].encode("utf-8", "replace")):
            return _from_json(_parse_json(value), options)
        return _from_text(value), False
    return _from_json(value, options)


def _option(name: str, value, options: dict) -> None:
    if _repeated(value):
        raise RequestError(400, f"The request gives {name} {len(value)} times: give it once.")
    options[name] = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else value


def parse_request(request: dict, max_images: int) -> ParsedRequest:
    """Images and options of one request, whatever way they were sent.

    TorchServe gives a request as {name: value}: "body" (or "data") for a raw body, and one entry
    per form field or file of a multipart upload (it does not pass query parameters). JSON bodies
    arrive already parsed; text bodies as str; everything else as bytes. A field name used by
    several files arrives as a RepeatedField (see keep_repeated_fields): each file is an image.
    """
    options: dict = {}
    images: list[bytes] = []
    many = False
    if not isinstance(request, dict):
        raise RequestError(400, f"The request could not be read: {SEND}.")
    for name, value in request.items():
        if name in OPTION_NAMES:
            _option(name, value, options)
            continue
        for part in value if _repeated(value) else [value]:
            found, listed = _one_part(part, options)
            many = many or listed or bool(images)
            images += found
    if not images:
        raise RequestError(400, "The request is empty: send the bytes of a JPEG, PNG, WebP, BMP, GIF or TIFF image.")
    if len(images) > max_images:
        raise RequestError(413, f"The request holds {len(images)} images, more than the limit of {max_images}: "
                                "split it.")
    return ParsedRequest(images, many=many, options=options)


def declared_pixels(data: bytes) -> int:
    """Width x height from the image's header, without decoding it; 0 when there is no readable header
    (the decoder then says what is wrong with it)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.size[0]) * int(img.size[1])
    except Exception:  # Pillow raises many types on odd bytes; the full decode reports them properly
        return 0


def check_pixel_budget(images: list[bytes], budget: int) -> None:
    """Refuse a request whose images add up to more pixels than one request may cost (each image alone is
    capped by preprocess.json's max_pixels; this caps their sum)."""
    if len(images) < 2:
        return  # one image: its own limit (max_pixels) applies, with its own message
    total = sum(declared_pixels(image) for image in images)
    if total > budget:
        raise RequestError(413, f"The request's {len(images)} images hold {total / 1e6:.0f} Mpixel, more than "
                                f"the limit of {budget / 1e6:.0f} Mpixel per request: send fewer or smaller images "
                                "per request.")


def topk_option(value, default: int, num_classes: int) -> int:
    """k from the request (JSON key, form field or header), never more than the number of classes."""
    if value is None:
        return min(default, num_classes)
    text = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,6}", text.strip(), flags=re.ASCII) or int(text) < 1:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise RequestError(400, f"topk must be a whole number from 1 to 999999, not {shown!r}: send e.g. "
                                "X-Topk: 3.")
    return min(int(text), num_classes)


def request_header(context, idx: int, names: tuple[str, ...]):
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return None
    wanted = {n.lower() for n in names}
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() in wanted and isinstance(value, str):
            return value
    return None


def keep_repeated_fields() -> bool:
    """Make TorchServe's worker keep every file of a field name a multipart upload repeats.

    The worker folds a request's parameters into a dict by name, so `curl -F file=@a -F file=@b`
    would reach the handler as b alone and get a 200 for one image: silent data loss. This wraps
    that step in this worker process so a repeated name arrives as a RepeatedField. Returns False
    outside TorchServe (no ts package), where nothing needs it.
    """
    try:
        from ts.service import Service
    except ImportError:
        return False
    original = Service.retrieve_data_for_inference
    if getattr(original, "keeps_repeated_fields", False):
        return True

    def retrieve(batch):
        headers, inputs, ids = original(batch)
        for idx, request in enumerate(batch or []):
            names = [p.get("name") for p in request.get("parameters") or []]
            if len(set(names)) < len(names):
                merged: dict = {}
                for p in request["parameters"]:
                    merged.setdefault(p["name"], RepeatedField()).append(p["value"])
                inputs[idx] = {n: v if len(v) > 1 else v[0] for n, v in merged.items()}
        return headers, inputs, ids

    retrieve.keeps_repeated_fields = True  # type: ignore[attr-defined]
    Service.retrieve_data_for_inference = staticmethod(retrieve)
    return True
