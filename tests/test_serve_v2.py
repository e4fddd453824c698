"""The Open Inference Protocol as zoo reads and writes it (zoo/serve/v2.py), without a server: every form a
request may take, a one-sentence 4xx for every malformed one (hypothesis), the answer tensors (an
out-of-distribution field included), and the endpoint forms `zoo predict --server` accepts."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import write_tiny_export

from zoo.errors import UsageError
from zoo.handlers.zoo_requests import RequestError
from zoo.serve import v2
from zoo.serve.client import Endpoint, parse_endpoint

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # its bytes only travel here; nothing decodes it


def _binary(entries: list[tuple[dict, bytes]], extra: dict | None = None) -> tuple[bytes, str]:
    inputs = [{**spec, "parameters": {"binary_data_size": len(raw)}} for spec, raw in entries]
    head = json.dumps({"inputs": inputs, **(extra or {})}).encode()
    return head + b"".join(raw for _, raw in entries), str(len(head))


def _elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def test_bytes_images_in_json_base64_and_in_binary_data_read_the_same():
    as_json = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                           "data": [base64.b64encode(PNG).decode(), base64.b64encode(PNG[:9]).decode()]}],
               "parameters": {"topk": 2}, "id": "r1", "outputs": [{"name": "labels"}]}
    a = v2.parse_request(json.dumps(as_json).encode())
    body, length = _binary([({"name": "image", "shape": [2, 1], "datatype": "BYTES"}, _elements(PNG, PNG[:9]))])
    b = v2.parse_request(body, length)
    assert a.tensor.data == b.tensor.data == [PNG, PNG[:9]]
    assert (a.parameters, a.id, a.outputs) == ({"topk": 2}, "r1", [{"name": "labels"}])
    assert v2.request_images(b.tensor, v2.Limits()) == [PNG, PNG[:9]]


def test_what_the_client_sends_is_what_the_server_reads():
    body, headers = v2.encode_images([PNG, b"x" * 5], topk=3)
    parsed = v2.parse_request(body, headers[v2.HEADER_LENGTH])
    assert parsed.tensor.data == [PNG, b"x" * 5] and parsed.parameters == {"topk": 3}


def test_fp32_pixels_in_json_nested_or_flat_and_in_binary_data():
    pixels = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    for data in (pixels.tolist(), pixels.reshape(-1).tolist()):
        request = {"inputs": [{"name": "pixels", "shape": [2, 3, 5, 4], "datatype": "FP32", "data": data}]}
        parsed = v2.parse_request(json.dumps(request).encode())
        np.testing.assert_array_equal(v2.request_pixels(parsed.tensor, v2.Limits()), pixels)
    body, length = _binary([({"name": "pixels", "shape": [2, 3, 5, 4], "datatype": "FP32"},
                             pixels.astype("<f4").tobytes())])
    np.testing.assert_array_equal(v2.request_pixels(v2.parse_request(body, length).tensor, v2.Limits()), pixels)


def _input(**over) -> bytes:
    entry = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PNG).decode()], **over}
    return json.dumps({"inputs": [entry]}).encode()


@pytest.mark.parametrize("body, header, status, words", [
    (b"", None, 400, "empty"),
    (b"garbage", None, 400, "not valid JSON"),
    (b"[1, 2]", None, 400, "not a JSON object"),
    (b'{"inputs": []}', None, 400, 'no "inputs"'),
    (json.dumps({"inputs": [{}, {}]}).encode(), None, 400, "2 input tensors"),
    (_input(datatype="INT32"), None, 400, "datatype INT32"),
    (_input(shape=[2]), None, 400, "needs 2"),
    (_input(shape="1"), None, 400, "has shape"),
    (_input(shape=[-1]), None, 400, "has shape"),
    (_input(shape=[100_000, 100_000]), None, 413, "elements"),
    (_input(data=["not base64!"]), None, 400, "not valid base64"),
    (_input(data=[12]), None, 400, "a number"),
    (_input(data=[[[["x"]]]] * 1), None, 400, "base64"),
    (_input(datatype="FP32", shape=[1, 2], data=[1, "a"]), None, 400, "not a (nested) list of numbers"),
    (_input(datatype="FP32", shape=[1, 2], data=[1, [2, 3]]), None, 400, "not a (nested) list of numbers"),
    (_input(datatype="FP32", shape=[1], data=[True]), None, 400, "not a (nested) list of numbers"),
    (_input(datatype="FP32", shape=[1], data=[float("nan")]), None, 400, "NaN"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}).encode(), None, 400,
     "binary_data_size"),
    (b'{"inputs": 1}', "1000", 400, "Inference-Header-Content-Length"),
    (b'{"inputs": 1}', "x", 400, "Inference-Header-Content-Length"),
    (b'{"inputs": 1}', "\u00b2", 400, "Inference-Header-Content-Length"),  # a digit to str.isdigit, not to int()
    (json.dumps({**json.loads(_input()), "parameters": [1]}).encode(), None, 400, '"parameters" is a list'),
    (json.dumps({**json.loads(_input()), "id": 7}).encode(), None, 400, '"id" is a number'),
    (json.dumps({**json.loads(_input()), "outputs": ["labels"]}).encode(), None, 400, '"outputs" must be'),
])
def test_malformed_requests_get_one_sentence(body, header, status, words):
    with pytest.raises(RequestError) as refused:
        v2.parse_request(body, header)
    assert refused.value.status == status and words in str(refused.value) and str(refused.value).endswith(".")


@pytest.mark.parametrize("raw, words", [
    (struct.pack("<I", 100) + b"short", "declares 100 bytes"),
    (b"\x01\x00", "ends inside"),
])
def test_broken_binary_bytes_elements(raw, words):
    body, length = _binary([({"name": "image", "shape": [1], "datatype": "BYTES"}, raw)])
    with pytest.raises(RequestError, match=words):
        v2.parse_request(body, length)


def test_binary_sizes_must_add_up():
    body, length = _binary([({"name": "pixels", "shape": [1, 3, 1, 1], "datatype": "FP32"}, b"\0" * 11)])
    with pytest.raises(RequestError, match="not a multiple of 4"):
        v2.parse_request(body, length)
    body, length = _binary([({"name": "image", "shape": [1], "datatype": "BYTES"}, _elements(PNG))])
    with pytest.raises(RequestError, match="after the JSON header"):
        v2.parse_request(body + b"tail", length)
    with pytest.raises(RequestError, match="declares"):
        v2.parse_request(body[:-3], length)


def test_limits_on_images_and_pixels():
    limits = v2.Limits(max_images=2, pixel_budget=1000)
    with pytest.raises(RequestError) as refused:
        v2.request_images(v2.Tensor("image", "BYTES", [3], [PNG] * 3), limits)
    assert refused.value.status == 413 and "limit of 2" in str(refused.value)
    with pytest.raises(RequestError) as refused:
        v2.request_pixels(v2.Tensor("pixels", "FP32", [2, 3, 30, 30], np.zeros((2, 3, 30, 30), np.float32)), limits)
    assert refused.value.status == 413 and "Mpixel" in str(refused.value)
    for shape in ([1, 4, 8, 8], [1, 3, 8], [1, 3, 0, 8]):
        with pytest.raises(RequestError, match=r"\[N, 3, H, W\]"):
            v2.request_pixels(v2.Tensor("pixels", "FP32", shape, np.zeros(shape, np.float32)), limits)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=6)))
def test_any_bytes_are_read_or_refused_with_a_4xx(body, header):
    try:
        parsed = v2.parse_request(body, header)
    except RequestError as e:
        assert 400 <= e.status < 500 and str(e).endswith(".")
    else:
        assert parsed.tensor.datatype in v2.DATATYPES


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(
    max_size=8), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"name": json_values, "shape": json_values, "datatype": st.sampled_from(
    ["BYTES", "FP32", "INT8", 3]), "data": json_values, "parameters": json_values}), json_values)
def test_any_json_tensor_is_read_or_refused_with_a_4xx(entry, parameters):
    body = json.dumps({"inputs": [entry], "parameters": parameters}).encode()
    try:
        parsed = v2.parse_request(body)
        source = (v2.request_images if parsed.tensor.datatype == "BYTES" else v2.request_pixels)(
            parsed.tensor, v2.Limits())
    except RequestError as e:
        assert 400 <= e.status < 500 and str(e).endswith(".")
    else:
        assert len(source) >= 1


def test_answers_come_from_edge_results_and_carry_the_ood_field_when_there_is_one():
    plain = SimpleNamespace(top_k={"cat": 0.7, "dog": 0.3}, features=None)
    with_ood = SimpleNamespace(top_k={"dog": 0.6, "cat": 0.4}, features=None,
                               ood={"score": 2.5, "threshold": 1.5, "out_of_distribution": True})
    assert v2.image_answer(plain) == {"top_k": {"cat": 0.7, "dog": 0.3}}
    tensors = {name: (datatype, array) for name, datatype, array in
               v2.answer_tensors([v2.image_answer(r) for r in (with_ood, with_ood)])}
    assert tensors["labels"][1].tolist() == [["dog", "cat"]] * 2
    np.testing.assert_allclose(tensors["probabilities"][1], [[0.6, 0.4]] * 2)
    assert tensors["ood_score"][0] == "FP32" and tensors["ood_score"][1].tolist() == [2.5, 2.5]
    assert tensors["out_of_distribution"][0] == "BOOL" and tensors["out_of_distribution"][1].tolist() == [True] * 2
    assert "ood_score" not in {name for name, _, _ in v2.answer_tensors([v2.image_answer(plain)])}
    features = v2.answer_tensors([v2.image_answer(SimpleNamespace(top_k={}, features=np.ones(4)))])
    assert [(n, d, a.shape) for n, d, a in features] == [("features", "FP32", (1, 4))]


def test_the_client_reads_the_answer_tensors():
    response = {"outputs": [{"name": "labels", "datatype": "BYTES", "shape": [1, 2], "data": ["dog", "cat"]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.6, 0.4]}]}
    assert v2.read_answers(response) == [{"dog": 0.6, "cat": 0.4}]
    response = {"outputs": [{"name": "features", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    assert v2.read_answers(response) == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError):
        v2.read_answers({"outputs": []})


def test_endpoint_forms():
    assert parse_endpoint("http://127.0.0.1:8080/predictions/m") == Endpoint("http://127.0.0.1:8080", "m", "torchserve")
    for url in ("http://h:9/v2/models/m", "http://h:9/v2/models/m/infer/"):
        assert parse_endpoint(url) == Endpoint("http://h:9", "m", "kserve")
    ingress = parse_endpoint("https://h/ml/zoo/v2/models/m")
    assert ingress.base == "https://h/ml/zoo" and ingress.url == "https://h/ml/zoo/v2/models/m/infer"
    for url in ("http://h:9", "http://h:9/v2/models", "http://h:9/v2/models/m/ready", "ftp://h/predictions/m"):
        with pytest.raises(UsageError, match="v2/models/MODEL_NAME"):
            parse_endpoint(url)


@pytest.mark.skipif(find_spec("kserve") is None, reason="the kserve package is not installed")
def test_the_kserve_model_answers_from_edge_results_and_passes_the_ood_field_on(monkeypatch, tmp_path):
    """The engine's kserve.Model, in this process: EdgeModel's results become the response's tensors, and a field
    EdgeResult gains (the out-of-distribution check, stubbed here) reaches the client without engine changes."""
    monkeypatch.setattr(sys, "argv", ["zoo-test"])  # kserve.model_server reads the command line when imported
    from kserve.protocol.infer_type import InferInput, InferRequest

    from zoo.serve.kserve_engine import ZooModel

    model = ZooModel("tiny", write_tiny_export(tmp_path / "export"), "classifier", ThreadPoolExecutor(1), 1,
                     v2.Limits())
    model.load()
    edge_predict = model.model.predict

    def with_ood(*args, **kwargs):
        results = edge_predict(*args, **kwargs)
        for r in results:
            r.ood = {"score": 3.0, "threshold": 2.0, "out_of_distribution": True}
        return results

    monkeypatch.setattr(model.model, "predict", with_ood)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (120, 40, 200)).save(buf, format="PNG")
    request = InferRequest("tiny", [InferInput("image", [1], "BYTES", data=[buf.getvalue()])],
                           parameters={"topk": 2})
    headers: dict[str, str] = {}
    body, _ = asyncio.run(model.predict(request, {}, headers)).to_rest()
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    want = edge_predict([buf.getvalue()], 2)[0].top_k
    assert outputs["labels"] == list(want) and outputs["probabilities"] == pytest.approx(list(want.values()))
    assert outputs["ood_score"] == [3.0] and outputs["out_of_distribution"] == [True]
    assert headers["X-Zoo-Variant"] == "fp32"


def test_the_readme_manifest_holds_a_configuration_the_engine_accepts():
    """No cluster here: this checks the README's InferenceService as far as this machine can."""
    import re
    from pathlib import Path

    import yaml

    from zoo.serve.kserve_process import engine_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = re.search(r"<!-- kserve-manifest -->\n```yaml\n(.*?)```", readme, re.S).group(1)
    config_map, service = yaml.safe_load_all(text)
    cfg = engine_config(json.loads(config_map["data"]["kserve.json"]))
    assert cfg["export_dir"] == "/mnt/models" and set(cfg["models"].values()) == {"classifier", "features"}
    container = service["spec"]["predictor"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "zoo.serve.kserve_engine"]
    assert container["ports"][0]["containerPort"] == cfg["port"] and cfg["host"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    with pytest.raises(ValueError, match="export_dir"):
        engine_config({"models": {}})
