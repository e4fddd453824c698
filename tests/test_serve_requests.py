"""Request parsing under attack: property-based fuzzing of the handler, and the cases it and users found.

The handler runs from a folder staged exactly as TorchServe unpacks an archive (a tiny ONNX
model on real ONNX Runtime), and TorchServe's own request step (ts.service) is used where it
matters. The live-server fuzz pass is in test_serve_fuzz_live.py.
"""
from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import MockContext, load_handler, write_tiny_export

from zoo.export.archive import stage_model_dir

FUZZ_EXAMPLES = 600  # at least 500 generated requests, none raising


def _png(size: tuple[int, int], color=(120, 40, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = [_png((40, 30)), _jpeg((33, 47))]
HUGE = _png((6300, 6300))  # 40 Mpixel, a few kB: under the per-image limit, 32 of them are not


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    export = write_tiny_export(tmp_path_factory.mktemp("tiny-export"))
    handler, _ = load_handler(stage_model_dir(export, "classifier", "onnx", tmp_path_factory.mktemp("cls")),
                              "classifier")
    return handler


def _serving():
    return sys.modules["zoo_requests"]


def _answers(handler, batch: list, headers: list[dict] | None = None) -> list[tuple[int, object]]:
    """(status, decoded body) per request of one handle() call; 200 where the handler set no status."""
    context = MockContext(Path("."), headers=headers or [{}] * len(batch))
    responses = handler.handle(batch, context)
    assert len(responses) == len(batch)
    return [(context.status.get(i, (200, ""))[0], json.loads(r)) for i, r in enumerate(responses)]


# ---------------------------------------------------------------- the findings, one test each
def test_repeated_field_names_answer_every_file(classifier):
    """curl -F file=@a.png -F file=@b.png: TorchServe's worker step folds the parts by name; with the
    handler loaded, every file is answered, in order (before: a 200 for the last file only)."""
    from ts.service import Service

    a, b = _png((40, 30), (250, 0, 0)), _png((30, 40), (0, 0, 250))
    wire = [{"requestId": b"r1", "headers": [], "parameters": [
        {"name": "file", "contentType": "image/png", "value": a},
        {"name": "file", "contentType": "image/png", "value": b},
        {"name": "other", "contentType": "image/png", "value": a}]}]
    _, inputs, _ = Service.retrieve_data_for_inference(wire)
    [(status, answer)] = _answers(classifier, inputs)
    alone = [_answers(classifier, [{"body": x}])[0][1] for x in (a, b, a)]
    assert status == 200 and answer == alone


def test_a_bad_part_among_good_ones_is_named(classifier):
    """A several-file upload with one bad file is refused as a whole, and the message says which file."""
    [(status, body)] = _answers(classifier, [{"file1": GOOD[0], "file2": b"garbage", "file3": GOOD[1]}])
    assert status == 400 and body["message"].startswith("Image 2 of 3: The data is not an image"), body


def test_repeated_topk_is_refused(classifier):
    from ts.service import Service

    wire = [{"requestId": b"r1", "headers": [], "parameters": [
        {"name": "file", "contentType": "image/png", "value": GOOD[0]},
        {"name": "topk", "contentType": "text/plain", "value": "1"},
        {"name": "topk", "contentType": "text/plain", "value": "2"}]}]
    _, inputs, _ = Service.retrieve_data_for_inference(wire)
    [(status, body)] = _answers(classifier, inputs)
    assert status == 400 and "topk 2 times" in body["message"]


def test_pixel_cost_per_request_is_bounded(classifier):
    """32 images of 6300x6300 are each allowed, together 1.27 Gpixel: refused before any is decoded."""
    b64 = base64.b64encode(HUGE).decode()
    [(status, body)] = _answers(classifier, [{"body": {"images": [b64] * 32}}])
    assert status == 413 and "1270 Mpixel" in body["message"] and "per request" in body["message"]
    [(status, _)] = _answers(classifier, [{"body": {"images": [base64.b64encode(GOOD[0]).decode()] * 32}}])
    assert status == 200


@pytest.mark.parametrize("request_, words", [
    ({"body": "hello world"}, "11 characters of text, not an image or base64"),  # text/plain
    ({"body": b'{"image": "abc"'}, "not valid JSON"),  # application/json that TorchServe could not parse
    ({"body": "[" * 50}, "not valid JSON"),
    ({"body": b"[" * 100_000}, "nested too deeply"),
    ({"body": 42}, "is a number"),
    ({"body": {"image": 7}}, '"image" holds a number'),
    ({"body": {"images": "abc"}}, '"images" holds a string'),
    ({"body": {"imgs": []}}, "keys: imgs"),
    ({"body": ["aGk=", None]}, "Item 1 of the JSON list is null"),
])
def test_messages_name_what_was_received(classifier, request_, words):
    [(status, body)] = _answers(classifier, [request_])
    assert status == 400 and words in body["message"] and body["message"].endswith("."), body


@pytest.mark.parametrize("topk", ["\u00b2", "1.5", "-1", "1e3", " ", "\U0001d7d9"])
def test_odd_topk_gets_a_clear_message(classifier, topk):
    """'²' passed str.isdigit() and then failed int(): a generic "(ValueError)" before."""
    [(status, body)] = _answers(classifier, [{"body": GOOD[0]}], headers=[{"X-Topk": topk}])
    assert status == 400 and body["message"].startswith("topk must be a whole number"), body


# ---------------------------------------------------------------- property-based fuzzing
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(JSON_SCALARS | st.sampled_from([base64.b64encode(g).decode() for g in GOOD]),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["image", "images", "topk", "x"]) | st.text(max_size=5), inner,
                                      max_size=4), max_leaves=12)


@st.composite
def mutated_image(draw) -> bytes:
    """A valid image with bytes flipped, cut short or spliced: what a broken upload looks like."""
    data = bytearray(draw(st.sampled_from(GOOD)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


BODY = st.one_of(
    st.binary(max_size=200), st.text(max_size=100), JSON, mutated_image(), st.sampled_from(GOOD),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda b: b"{" + b, st.binary(max_size=50)),
)
FIELD = st.sampled_from(["body", "data", "file", "file2", "topk"]) | st.text(max_size=8)


@st.composite
def fuzzed_request(draw) -> tuple[dict, dict]:
    request = draw(st.dictionaries(FIELD, BODY, max_size=4))
    if draw(st.booleans()) and request:  # a multipart field name used several times
        name = draw(st.sampled_from(sorted(request)))
        request[name] = _serving().RepeatedField([request[name], *draw(st.lists(BODY, min_size=1, max_size=3))])
    headers = draw(st.dictionaries(st.sampled_from(["X-Topk", "topk", "Content-Type", "x"]), st.text(max_size=12),
                                   max_size=3))
    return request, headers


def test_fuzzed_requests_are_answered_or_refused_never_raise(classifier):
    """At least 500 generated bodies, JSON, multipart forms and headers: the parser raises nothing but
    its own RequestError, and every handle() call answers 200 or a 4xx with a one-sentence message."""
    tried: list[int] = []
    requests_module = _serving()

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=fuzzed_request())
    @example(case=({"body": "[" * 5000}, {}))  # found by this test: RecursionError before the fix
    @example(case=({"body": "\u00b2"}, {"X-Topk": "\u00b2"}))
    @example(case=({"": b"{\xff"}, {}))
    def check(case):
        request, headers = case
        tried.append(1)
        try:
            requests_module.parse_request(request, 32)
        except requests_module.RequestError as e:
            assert 400 <= e.status < 500 and str(e).endswith(".")
        [(status, body)] = _answers(classifier, [request], [headers])
        if status != 200:
            assert 400 <= status < 500 and body["code"] == status and body["message"].endswith("."), body
        else:
            assert isinstance(body, (dict, list))

    check()
    print(f"\n{len(tried)} generated requests, 0 exceptions")
    assert len(tried) >= 500
