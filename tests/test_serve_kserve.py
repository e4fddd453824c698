"""zoo's KServe engine, a real server process on a real lite0 export, with no Java anywhere.

One engine for the module, started by `zoo.serve.start_kserve` with JAVA_HOME pointing nowhere and a
PATH that holds no java, and stopped (its process group checked empty) even when a test or the start
fails. Its answers must equal `zoo predict` on this machine (zoo.edge) in every request form: the Open
Inference Protocol in JSON (base64 images, preprocessed FP32 pixels) and in binary data, and the raw
bytes /predictions/NAME takes; the TorchServe tests' bad inputs and seeded fuzz pass must get a 4xx,
never a 5xx. The CLI (`zoo serve start --engine kserve`, status, stop) is run as a user runs it.
Skips only where the kserve package is not installed (make setup installs it).
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_helpers import bad_inputs, exported, malformed_request, sample_images

from zoo import serve
from zoo.preprocess import PreprocessConfig, preprocess
from zoo.serve import v2
from zoo.serve.client import split_ood
from zoo.serve.kserve_process import model_name

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_spec("kserve") is None, reason="the kserve package is not installed")]

TOLERANCE = 1e-5  # |dp| against zoo predict on this machine
GOOD_NAME = "square.jpg"


def _no_java_env(root: Path) -> dict[str, str]:
    """JAVA_HOME pointing nowhere and a PATH with no java on it: the engine must not need one."""
    empty = root / "no-java-bin"
    empty.mkdir(exist_ok=True)
    env = {"JAVA_HOME": str(root / "no-jdk-here"), "PATH": str(empty)}
    assert shutil.which("java", path=env["PATH"]) is None
    return env


class Engine:
    def __init__(self, info: serve.ServerInfo, export_dir: Path):
        self.info, self.export_dir, self.url = info, export_dir, info.inference_url
        self.images = sample_images()
        self.session = requests.Session()
        self.session.trust_env = False

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.url + path, timeout=60, **kwargs)

    def infer(self, body: bytes | dict, model: str = "lite0", headers: dict | None = None) -> requests.Response:
        if isinstance(body, dict):
            return self.post(f"/v2/models/{model}/infer", json=body, headers=headers)
        return self.post(f"/v2/models/{model}/infer", data=body, headers=headers)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    artifacts = exported(tmp_path_factory)
    root = tmp_path_factory.mktemp("kserve")
    port = serve.free_port_block(24000, count=1, step=149)
    cfg = serve.KServeConfig(export_dir=artifacts.export_dir, name="lite0", port=port, workers=2,
                             state_dir=root / "home" / str(port))
    info = None
    try:
        info = serve.start_kserve(cfg, timeout_s=600, env=_no_java_env(root))
        yield Engine(info, artifacts.export_dir)
    finally:
        stopped = serve.stop(cfg.folder)
        if info is not None:
            assert stopped is not None, "the engine was not running at the end"
            assert serve.live_group_members(info.pid) == [], "a process outlived the engine"


@pytest.fixture(scope="module")
def expected(engine):
    """What `zoo predict --model EXPORT` computes here, every class."""
    from zoo.edge import EdgeModel

    model = EdgeModel(engine.export_dir)
    results = model.predict(list(engine.images.values()), top_k=len(model.labels))
    return {name: r.top_k for name, r in zip(engine.images, results, strict=True)}


def _max_dp(answer: dict, want: dict) -> float:
    answer, _ = split_ood(answer)  # the OOD check is compared on its own (test_the_ood_field_...)
    assert list(answer) == list(want)  # the same labels in the same order
    return max(abs(answer[k] - want[k]) for k in want)


def _answers(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return v2.read_answers(response.json())


def test_every_request_form_answers_what_zoo_predict_computes(engine, expected):
    cfg = PreprocessConfig.load(engine.export_dir / "preprocess.json")
    worst = {"v2 json base64": 0.0, "v2 binary": 0.0, "v2 json fp32 pixels": 0.0, "/predictions raw bytes": 0.0,
             "/predictions urlencoded (curl -d)": 0.0}
    for name, data in engine.images.items():
        want = expected[name]
        b64 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(data).decode()]}], "parameters": {"topk": 3}}
        body, headers = v2.encode_images([data], topk=3)
        pixels = preprocess(data, cfg)[None]
        fp32 = {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32",
                            "data": pixels.reshape(-1).tolist()}], "parameters": {"topk": 3}}
        raw = engine.post("/predictions/lite0", data=data, headers={"Content-Type": "application/octet-stream",
                                                                    "X-Topk": "3"})
        assert raw.status_code == 200 and raw.headers["X-Zoo-Variant"] == "fp32", raw.text
        dash_d = engine.post("/predictions/lite0", data=data, headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Topk": "3"})
        assert dash_d.status_code == 200, dash_d.text
        for form, answer in (("v2 json base64", _answers(engine.infer(b64))[0]),
                             ("v2 binary", _answers(engine.infer(body, headers=headers))[0]),
                             ("v2 json fp32 pixels", _answers(engine.infer(fp32))[0]),
                             ("/predictions raw bytes", raw.json()),
                             ("/predictions urlencoded (curl -d)", dash_d.json())):
            worst[form] = max(worst[form], _max_dp(answer, want))
    print("\nmax |dp| against zoo predict: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    assert max(worst.values()) <= TOLERANCE


def test_zoo_predict_over_both_url_forms_equals_zoo_predict_here(engine, tmp_path, runner):
    from zoo.cli import app

    for name, data in engine.images.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    local = runner.invoke(app, ["predict", str(tmp_path), "--model", str(engine.export_dir), "--json",
                                "--top-k", "3"])
    want = {row["path"]: row for row in json.loads(local.stdout)}
    for url in (f"{engine.url}/v2/models/lite0", f"{engine.url}/predictions/lite0"):
        result = runner.invoke(app, ["predict", str(tmp_path), "--server", url, "--json", "--top-k", "3"])
        assert result.exit_code == 1  # one row is an error
        rows = {row["path"]: row for row in json.loads(result.stdout)}
        assert set(rows) == set(want)
        assert "not an image" in rows[str(tmp_path / "broken.jpg")]["error"]
        for path, row in rows.items():
            if row["error"] is None:
                assert row["variant"] == "fp32" and _max_dp(row["top_k"], want[path]["top_k"]) <= TOLERANCE


def test_several_images_in_one_request_get_the_answers_they_get_alone(engine, expected):
    names = ["square.jpg", "tall-gray.png", "cmyk.jpg", "small.webp"]
    body, headers = v2.encode_images([engine.images[n] for n in names], topk=3)
    for name, answer in zip(names, _answers(engine.infer(body, headers=headers)), strict=True):
        assert _max_dp(answer, expected[name]) <= TOLERANCE
    r = engine.post("/predictions/lite0", files=[("file", (n, engine.images[n])) for n in names])
    assert r.status_code == 200 and [list(split_ood(a)[0]) for a in r.json()] == [list(expected[n]) for n in names]


def test_features_model_equals_features_onnx(engine):
    from serve_helpers import expected_features

    want = expected_features(engine.export_dir, {GOOD_NAME: engine.images[GOOD_NAME]})[GOOD_NAME]
    body, headers = v2.encode_images([engine.images[GOOD_NAME]])
    vector = np.asarray(_answers(engine.infer(body, "lite0-features", headers))[0], dtype=np.float32)
    raw = engine.post("/predictions/lite0-features", data=engine.images[GOOD_NAME])
    assert vector.shape == want.shape == (1280,) and np.abs(vector - want).max() <= TOLERANCE
    assert np.abs(np.asarray(raw.json(), dtype=np.float32) - want).max() <= TOLERANCE


def test_binary_outputs_and_chosen_outputs(engine, expected):
    body, headers = v2.encode_images([engine.images[GOOD_NAME]], topk=3)
    head = json.loads(body[:int(headers[v2.HEADER_LENGTH])])
    head["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    text = json.dumps(head).encode()
    r = engine.infer(text + body[int(headers[v2.HEADER_LENGTH]):], headers={v2.HEADER_LENGTH: str(len(text))})
    assert r.status_code == 200, r.text
    length = int(r.headers[v2.HEADER_LENGTH])
    answer = json.loads(r.content[:length])
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    probs = np.frombuffer(r.content[length:], dtype="<f4")
    np.testing.assert_allclose(probs, list(expected[GOOD_NAME].values()), atol=TOLERANCE)


def test_the_torchserve_tests_bad_inputs_get_a_4xx_on_every_route(engine, expected):
    words = {"garbage": "not an image", "truncated.jpg": "truncated", "empty": "empty",
             "1x1.png": "1x1", "bomb.png": "too many pixels"}
    for name, data in bad_inputs().items():
        body, headers = v2.encode_images([data])
        b64 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(data).decode()]}]}
        raw = engine.post("/predictions/lite0", data=data, headers={"Content-Type": "application/octet-stream"})
        for r, message in ((raw, lambda r: r.json()["message"]), (engine.infer(body, headers=headers),
                                                                  lambda r: r.json()["error"]),
                           (engine.infer(b64), lambda r: r.json()["error"])):
            assert 400 <= r.status_code < 500 and words[name] in message(r), (name, r.status_code, r.text)
    ok = engine.post("/predictions/lite0", data=engine.images[GOOD_NAME])
    assert ok.status_code == 200 and _max_dp(ok.json(), expected[GOOD_NAME]) <= TOLERANCE


def _pixels(shape: list[int], datatype: str = "FP32", data=None) -> dict:
    return {"inputs": [{"name": "pixels", "shape": shape, "datatype": datatype,
                        "data": data if data is not None else [0.5] * int(np.prod(shape))}]}


@pytest.mark.parametrize("request_kwargs, status, words", [
    ({"data": b"hello world", "headers": {"Content-Type": "text/plain"}}, 400, "characters of text"),
    ({"data": b'{"image": "abc"', "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
    ({"json": {"images": [base64.b64encode(b"x" * 10).decode()] * 33}}, 413, "more than the limit of 32"),
    ({"data": b"\xff" * (33 * 1024 * 1024)}, 413, "larger than the limit"),
])
def test_torchserve_route_refusals_say_what_was_received(engine, request_kwargs, status, words):
    r = engine.post("/predictions/lite0", **request_kwargs)
    assert r.status_code == status and words in r.json()["message"], r.text[:300]


def _huge_png_b64() -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("body, status, words", [
    (_pixels([1, 4, 8, 8]), 400, "[N, 3, H, W]"),
    (_pixels([1, 3, 8]), 400, "[N, 3, H, W]"),
    (_pixels([1, 3, 8, 8], "INT32"), 400, "datatype INT32"),
    (_pixels([1, 3, 8, 8], data=[0.5] * 10), 400, "needs 192"),
    (_pixels([33, 3, 2, 2]), 413, "limit of 32"),
    ({"inputs": [{"name": "image", "shape": [33], "datatype": "BYTES", "data": ["aGk="] * 33}]}, 413, "limit of 32"),
    ({"inputs": [{"name": "image", "shape": [4], "datatype": "BYTES", "data": [_huge_png_b64()] * 4}]}, 413,
     "Mpixel per request"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
      "outputs": [{"name": "logits"}]}, 400, "logits"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
      "parameters": {"topk": 0}}, 400, "topk"),
])
def test_v2_refusals_say_what_was_received(engine, body, status, words):
    r = engine.infer(body)
    assert r.status_code == status and words in r.json()["error"], r.text[:300]


def test_unknown_models_get_404_and_the_v1_route_a_4xx(engine):
    assert engine.infer({"inputs": []}, model="nope").status_code == 404
    assert engine.post("/predictions/nope", data=b"x").status_code == 404
    r = engine.post("/v1/models/lite0:predict", json={"instances": [[1, 2]]})
    assert r.status_code == 400 and "/v2/models/lite0/infer" in r.json()["error"]


def _malformed_v2(rng: random.Random, good: bytes) -> dict:
    """A hostile Open Inference Protocol request: a valid binary request cut, flipped or mislabelled."""
    body, headers = v2.encode_images([good], topk=rng.choice([1, 3, 0, "x", None]))
    length = int(headers[v2.HEADER_LENGTH])
    choice = rng.randrange(5)
    if choice == 0:  # a byte of the JSON header flipped
        i = rng.randrange(length)
        body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1:]
    elif choice == 1:  # cut anywhere
        body = body[:rng.randrange(len(body))]
    elif choice == 2:  # a wrong header length
        headers[v2.HEADER_LENGTH] = rng.choice(["0", "-1", str(len(body) + 5), "abc", str(rng.randrange(length))])
    elif choice == 3:  # no header length: the binary body read as JSON
        headers.pop(v2.HEADER_LENGTH)
    else:  # a JSON request with a mangled tensor
        entry = {"name": "image", "shape": rng.choice([[1], [2], [], [-1], "1"]),
                 "datatype": rng.choice(["BYTES", "FP32", "FP16", "BOOL"]),
                 "data": rng.choice([[base64.b64encode(good).decode()], ["%%%"], [1.5], [[[]]], "x", None])}
        return {"json": {"inputs": [entry]}}
    return {"data": body, "headers": headers}


def test_seeded_fuzz_pass_never_gets_a_5xx(engine):
    good = engine.images["small.webp"]
    rng = random.Random(16)
    statuses: dict[int, int] = {}
    for i in range(120):
        torchserve = i % 2 == 0
        kwargs = malformed_request(rng, good) if torchserve else _malformed_v2(rng, good)
        r = engine.post("/predictions/lite0" if torchserve else "/v2/models/lite0/infer", **kwargs)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (i, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.json()["message" if torchserve else "error"].endswith("."), r.text[:300]
        ok = engine.post("/predictions/lite0", data=good)
        assert ok.status_code == 200, (i, ok.text)
    print(f"\nkserve fuzz: 120 malformed requests (half v2, half TorchServe forms), statuses "
          f"{dict(sorted(statuses.items()))}, 0 5xx, each followed by a valid 200")


def test_metadata_readiness_and_the_bind_address(engine):
    r = engine.session.get(f"{engine.url}/v2/models/lite0", timeout=10)
    assert r.status_code == 200 and {i["datatype"] for i in r.json()["inputs"]} == {"BYTES", "FP32"}
    assert engine.session.get(f"{engine.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    port = int(engine.url.rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only
    assert "libtorch" not in Path(f"/proc/{engine.info.pid}/maps").read_text()  # zoo[kserve] needs no PyTorch
    assert not Path(engine.info.state_dir, "key_file.json").exists()


def test_cli_start_status_stop_without_java(engine, tmp_path):
    env = {**os.environ, "ZOO_SERVE_HOME": str(tmp_path / "home"), **_no_java_env(tmp_path)}
    port = str(serve.free_port_block(24500, count=1, step=151))
    zoo = [sys.executable, "-m", "zoo.cli"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*zoo, *args], env=env, capture_output=True, text=True, timeout=600)

    try:
        started = run("serve", "start", "--engine", "kserve", str(engine.export_dir), "--port", port,
                      "--workers", "1")
        assert started.returncode == 0, started.stderr
        name = model_name(engine.export_dir)  # the run's, as `zoo export` names archives
        assert "KServe engine" in started.stdout and f"/v2/models/{name}/infer" in started.stdout
        status = run("serve", "status", "--port", port, "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["engine"] == "kserve" and {s["status"] for s in info["model_status"].values()} == {"READY"}
        assert "no token authorization" in run("serve", "status", "--port", port).stdout
        pid = info["pid"]
    finally:
        stopped = run("serve", "stop", "--port", port)
    assert stopped.returncode == 0 and "Stopped the KServe engine" in stopped.stdout, stopped.stderr
    assert serve.live_group_members(pid) == []
    assert run("serve", "status", "--port", port).returncode == 1


def test_refusals_before_and_while_starting(engine, tmp_path, runner):
    from zoo.cli import app
    from zoo.errors import UsageError, ZooError

    home = tmp_path / "home"
    with pytest.raises(UsageError, match="holds no classifier.onnx"):
        serve.start_kserve(serve.KServeConfig(export_dir=tmp_path, state_dir=home / "1"))
    busy = int(engine.url.rsplit(":", 1)[1])
    with pytest.raises(ZooError, match="in use"):
        serve.start_kserve(serve.KServeConfig(export_dir=engine.export_dir, port=busy, state_dir=home / "2"))
    # A variant the export does not hold: the engine exits, and start says why in the server's own words.
    port = serve.free_port_block(24700, count=1, step=157)
    with pytest.raises(ZooError, match="exited with status 1") as failed:
        serve.start_kserve(serve.KServeConfig(export_dir=engine.export_dir, port=port, variant="fp16",
                                              state_dir=home / "3"), timeout_s=300)
    assert "zoo: " in str(failed.value) and "fp16" in str(failed.value)
    assert serve.running_server(home / "3") is None
    for args in (["serve", "start", "--engine", "kserve"], ["serve", "start", str(engine.export_dir)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_the_ood_field_equals_zoo_predict_on_every_route(engine):
    from zoo.edge import EdgeModel

    local = EdgeModel(engine.export_dir).predict(list(engine.images.values()), top_k=3)
    assert all(r.ood is not None for r in local), "the test export has no OOD summary"
    worst = 0.0
    for (name, data), want in zip(engine.images.items(), local, strict=True):
        body, headers = v2.encode_images([data], topk=3)
        raw = engine.post("/predictions/lite0", data=data, headers={"Content-Type": "application/octet-stream"})
        for answer in (_answers(engine.infer(body, headers=headers))[0], raw.json()):
            _, ood = split_ood(answer)
            assert ood is not None and ood["out_of_distribution"] == want.ood["out_of_distribution"], name
            assert ood["threshold"] == pytest.approx(want.ood["threshold"], abs=1e-6)
            worst = max(worst, abs(ood["score"] - want.ood["score"]))
    print(f"\nOOD score, KServe engine against zoo predict: max |d| {worst:.1e}")
    assert worst <= TOLERANCE
