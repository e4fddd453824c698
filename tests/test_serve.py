"""A real TorchServe serving a real lite0 export: parity with local ONNX Runtime, batching, bad input.

One server for the whole module (starting one takes a while): the classifier and the features
extractor on the onnx runtime, and the classifier on the torch runtime, with TorchServe batching
on. Its workers run with a `zoo` package on PYTHONPATH that refuses to import, so every answer
here also proves the archives work where zoo is not installed. The server is stopped (its
process group killed) even when a test or the start fails.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_helpers import bad_inputs, expected_features, expected_ood, expected_predictions, exported, sample_images

from zoo import serve
from zoo.export.archive import write_archives
from zoo.serve.client import split_ood

pytestmark = pytest.mark.slow

BATCH_SIZE = 4
BATCH_DELAY_MS = 100  # requests released together by a barrier land within it (each lone request waits it out)


class Server:
    def __init__(self, info: serve.ServerInfo, images: dict[str, bytes], export_dir: Path, blocker: Path):
        self.info, self.images, self.export_dir, self.blocker = info, images, export_dir, blocker
        self.session = requests.Session()
        self.session.trust_env = False

    def key(self, kind: str = "inference") -> str:
        return serve.read_key(self.info.key_file, kind)

    def post(self, model: str, body=None, json_body=None, headers=None, files=None, token: bool = True):
        h = {"Authorization": f"Bearer {self.key()}"} if token else {}
        if body is not None:
            h["Content-Type"] = "application/octet-stream"
        h.update(headers or {})
        return self.session.post(f"{self.info.inference_url}/predictions/{model}", data=body, json=json_body,
                                 headers=h, files=files, timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    artifacts = exported(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve")
    store = root / "model_store"
    write_archives(artifacts.export_dir, "lite0", store)
    write_archives(artifacts.export_dir, "lite0t", store, runtime="torch")
    blocker = root / "no-zoo"
    (blocker / "zoo").mkdir(parents=True)
    (blocker / "zoo" / "__init__.py").write_text('raise ImportError("zoo is not installed on this server")\n')
    port = serve.free_port_block(21000, step=137)
    cfg = serve.ServeConfig(model_store=store, models=("lite0", "lite0-features", "lite0t"), port=port, workers=1,
                            batch_size=BATCH_SIZE, max_batch_delay_ms=BATCH_DELAY_MS,
                            state_dir=root / "home" / str(port))
    info = None
    try:
        info = serve.start(cfg, timeout_s=900, env={"PYTHONPATH": str(blocker)})
        yield Server(info, sample_images(), artifacts.export_dir, blocker)
    finally:
        stopped = serve.stop(cfg.folder)
        if info is not None:
            assert stopped is not None, "the server was not running at the end"
            assert serve.live_group_members(info.pid) == [], "a worker outlived the server"


@pytest.fixture(scope="module")
def expected(server):
    return expected_predictions(server.export_dir, server.images)


def _max_dp(answer: dict, want: dict) -> float:
    answer, ood = split_ood(answer)  # the labels, then the ood field every classifier answer ends with
    assert set(answer) == set(want) and ood is not None
    return max(abs(answer[k] - want[k]) for k in want)


def test_workers_cannot_import_zoo(server):
    """The blocker is on every worker's PYTHONPATH and makes `import zoo` fail there."""
    workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _in_group(p, server.info.pid)
               and b"model_service_worker" in (p / "cmdline").read_bytes()]
    assert len(workers) == 3
    for proc in workers:
        env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        assert str(server.blocker).encode() in env[b"PYTHONPATH"]
        result = subprocess.run([sys.executable, "-c", "import zoo"], capture_output=True, text=True,
                                env={"PYTHONPATH": env[b"PYTHONPATH"].decode(), "PATH": "/usr/bin:/bin"}, cwd="/")
        assert result.returncode != 0 and "zoo is not installed" in result.stderr


def _in_group(proc: Path, pgid: int) -> bool:
    try:
        return os.getpgid(int(proc.name)) == pgid
    except (ProcessLookupError, PermissionError):
        return False


@pytest.mark.parametrize("model", ["lite0", "lite0t"])  # the onnx and the torch runtime
def test_served_predictions_equal_local_onnx_runtime(server, expected, model):
    worst = 0.0
    for name, data in server.images.items():
        r = server.post(model, data, headers={"X-Topk": "3"})
        assert r.status_code == 200, (name, r.text)
        answer = r.json()
        assert next(iter(answer)) == next(iter(expected[name])), name  # same top-1, still the first key
        worst = max(worst, _max_dp(answer, expected[name]))
    print(f"\n{model}: {len(server.images)} images, max |dp| vs local ONNX Runtime = {worst:.2e}")
    assert worst <= 1e-4


def test_features_endpoint_equals_features_onnx(server):
    want = expected_features(server.export_dir, server.images)
    worst = 0.0
    for name, data in server.images.items():
        r = server.post("lite0-features", data)
        assert r.status_code == 200, (name, r.text)
        vector = np.asarray(r.json(), dtype=np.float32)
        assert vector.shape == want[name].shape == (1280,)
        worst = max(worst, float(np.abs(vector - want[name]).max()))
    print(f"\nfeatures: max |d| vs features.onnx = {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("model", ["lite0", "lite0t"])
def test_batched_mixed_sizes_get_the_same_answers_as_alone(server, model):
    names = list(server.images)[:8]
    alone = {n: server.post(model, server.images[n], headers={"X-Topk": "3"}).json() for n in names}
    barrier = threading.Barrier(len(names))

    def together(name):
        barrier.wait()
        return server.post(model, server.images[name], headers={"X-Topk": "3"})

    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(together, names))
    assert all(r.status_code == 200 for r in responses)
    assert {n: r.json() for n, r in zip(names, responses, strict=True)} == alone  # bit for bit
    log = (Path(server.info.log_dir) / "model_log.log").read_text()
    sizes = [int(line.split("zoo batch: ")[1].split(" ")[0]) for line in log.splitlines()
             if "zoo batch: " in line and f"-{model}_" in line]
    assert max(sizes) > 1, "TorchServe never batched requests together"
    print(f"\n{model} batching: handler calls carried up to {max(sizes)} requests")


def test_bad_input_gets_4xx_and_the_next_request_succeeds(server, expected):
    words = {"garbage": "not an image", "truncated.jpg": "truncated", "empty": "empty",
             "1x1.png": "1x1", "bomb.png": "too many pixels"}
    for name, data in bad_inputs().items():
        r = server.post("lite0", data)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert words[name] in r.json()["message"], r.text
        print(f"\n{name}: HTTP {r.status_code}: {r.json()['message']}")
        ok = server.post("lite0", server.images["square.jpg"], headers={"X-Topk": "3"})
        assert ok.status_code == 200 and _max_dp(ok.json(), expected["square.jpg"]) <= 1e-4


def test_bad_input_in_a_batch_leaves_the_others_alone(server, expected):
    bad = list(bad_inputs().values())[:2]
    good = ["square.jpg", "cmyk.jpg"]
    payloads = bad + [server.images[n] for n in good]
    barrier = threading.Barrier(len(payloads))

    def send(data):
        barrier.wait()
        return server.post("lite0", data, headers={"X-Topk": "3"})

    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(send, payloads))
    assert [r.status_code for r in responses[:2]] == [400, 400]
    for name, r in zip(good, responses[2:], strict=True):
        assert r.status_code == 200 and _max_dp(r.json(), expected[name]) <= 1e-4


def test_json_base64_and_multipart_requests(server, expected):
    names = ["exif-rotated.jpg", "wide-alpha.png", "tall-gray.png"]
    b64 = [base64.b64encode(server.images[n]).decode() for n in names]
    r = server.post("lite0", json_body={"images": b64, "topk": 3})
    assert r.status_code == 200
    for name, answer in zip(names, r.json(), strict=True):
        assert _max_dp(answer, expected[name]) <= 1e-4
    r = server.post("lite0", json_body={"image": b64[0], "topk": 1})
    assert list(r.json()) == [next(iter(expected[names[0]])), "ood"]
    r = server.post("lite0", files={n: server.images[n] for n in names[:2]}, headers={"X-Topk": "3"})
    assert r.status_code == 200 and len(r.json()) == 2 and _max_dp(r.json()[1], expected[names[1]]) <= 1e-4


def test_topk_never_exceeds_the_classes(server):
    def labels(r):
        return split_ood(r.json())[0]

    assert len(labels(server.post("lite0", server.images["square.jpg"]))) == 3  # default 5, 3 classes
    assert len(labels(server.post("lite0", server.images["square.jpg"], headers={"X-Topk": "10"}))) == 3
    assert len(labels(server.post("lite0", server.images["square.jpg"], headers={"X-Topk": "1"}))) == 1


def test_the_ood_field_is_the_same_served_predicted_and_on_the_edge(server, tmp_path_factory, tmp_path, monkeypatch,
                                                                    runner):
    """Both runtimes served, `zoo predict --server`, `zoo predict --model` and EdgeModel: one score per image."""
    from zoo.cli import app

    in_distribution = sorted((exported(tmp_path_factory).data_dir / "val").rglob("*.png"))[:4]
    images = {**server.images, **{p.name: p.read_bytes() for p in in_distribution}}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in images]
    answers = {"edge": expected_ood(server.export_dir, images)}
    local = runner.invoke(app, ["predict", *paths, "--model", str(server.export_dir), "--json"])
    answers["zoo predict --model"] = {Path(r["path"]).name: r["ood"] for r in json.loads(local.stdout)}
    monkeypatch.setenv("ZOO_SERVE_HOME", str(Path(server.info.state_dir).parent))
    for model in ("lite0", "lite0t"):  # the onnx and the torch runtime
        answers[f"{model} HTTP"] = {n: split_ood(server.post(model, d).json())[1] for n, d in images.items()}
        remote = runner.invoke(app, ["predict", *paths, "--server", f"{server.info.inference_url}/predictions/{model}",
                                     "--json"])
        assert remote.exit_code == 0, remote.output
        answers[f"{model} zoo predict --server"] = {Path(r["path"]).name: r["ood"] for r in json.loads(remote.stdout)}
    worst = 0.0
    for name in images:
        want = answers["edge"][name]
        for where, got in answers.items():
            assert got[name] is not None and got[name]["threshold"] == want["threshold"], (where, name)
            worst = max(worst, abs(got[name]["score"] - want["score"]))
            if abs(want["score"] - want["threshold"]) > 1e-5:
                assert got[name]["out_of_distribution"] == want["out_of_distribution"], (where, name)
    verdicts = {n: answers["edge"][n]["out_of_distribution"] for n in images}
    print(f"\nood: {len(images)} images x {len(answers)} paths, max |d score| = {worst:.2e}; flagged: "
          f"{sorted(n for n, v in verdicts.items() if v)}")
    assert worst <= 1e-5
    assert not any(verdicts[p.name] for p in in_distribution)  # the run's own kind of image passes
    assert all(verdicts[n] for n in server.images)  # photographs are not textures


def test_one_access_log_line_per_request_and_no_per_request_frontend_chatter(server):
    logs = Path(server.info.log_dir)
    before = (logs / "access_log.log").read_text().count("POST /predictions/lite0 ")
    for _ in range(5):
        assert server.post("lite0", server.images["square.jpg"]).status_code == 200
    assert (logs / "access_log.log").read_text().count("POST /predictions/lite0 ") == before + 5
    frontend = (logs / "ts_log.log").read_text()
    assert "Inference API bind to" in frontend  # lifecycle lines stay
    for chatter in ("Sending response for jobId", "Backend response time", "Waiting time ns", "[DEBUG]"):
        assert chatter not in frontend, chatter
    assert not (logs / "ts_metrics.log").exists() and not (logs / "model_metrics.log").exists()
    metrics = requests.get(f"{server.info.metrics_url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text  # metrics live here


def test_secure_by_default(server):
    r = server.post("lite0", server.images["square.jpg"], token=False)
    assert r.status_code == 400 and "Token" in r.text  # TorchServe's code for a missing token, as the README says
    management = {"Authorization": f"Bearer {server.key('management')}"}
    r = requests.post(f"{server.info.management_url}/models", params={"url": "https://example.com/evil.mar"},
                      headers=management, timeout=30)
    assert r.status_code >= 400  # the management API does not load models from URLs
    for url in (server.info.inference_url, server.info.management_url, server.info.metrics_url):
        assert url.startswith("http://127.0.0.1:")
    assert oct(Path(server.info.state_dir).stat().st_mode & 0o777) == "0o700"


def test_status_client_and_cli(server, tmp_path, monkeypatch, runner):
    from zoo.cli import app
    from zoo.serve import ServeClient, predict_remote

    status = serve.status(Path(server.info.state_dir))
    assert {name: s["workers"] for name, s in status["model_status"].items()} == {
        "lite0": ["READY"], "lite0-features": ["READY"], "lite0t": ["READY"]}
    assert status["model_status"]["lite0"]["batch_size"] == BATCH_SIZE
    # `zoo predict --server` and `zoo serve status` find the server through ZOO_SERVE_HOME/<port>.
    port = int(server.info.inference_url.rsplit(":", 1)[1])
    monkeypatch.setenv("ZOO_SERVE_HOME", str(Path(server.info.state_dir).parent))
    (tmp_path / "good.jpg").write_bytes(server.images["square.jpg"])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rows = predict_remote(f"{server.info.inference_url}/predictions/lite0",
                          [tmp_path / "good.jpg", tmp_path / "bad.jpg"], top_k=2)
    assert len(rows[0]["top_k"]) == 2 and rows[0]["error"] is None
    assert rows[1]["top_k"] == {} and "not an image" in rows[1]["error"]
    result = runner.invoke(app, ["serve", "status", "--port", str(port)])
    assert result.exit_code == 0 and "key_file.json" in result.output and "READY" in result.output
    # An expired inference key is replaced through the API key (TorchServe rewrites its key file).
    client = ServeClient(f"{server.info.inference_url}/predictions/lite0")
    before = server.key()
    assert client._refresh_token() and server.key() != before
    assert len(client.classify(server.images["square.jpg"], topk=1)) == 1


def test_zoo_export_writes_both_archives_by_default(tmp_path_factory, tmp_path, monkeypatch, runner):
    import shutil

    import zoo.export.onnx_export as onnx_export
    from zoo.cli import app

    artifacts = exported(tmp_path_factory)

    def already_exported(run_dir, out_dir, **kwargs):  # the real export ran once for this module already
        shutil.copytree(artifacts.export_dir, out_dir, ignore=shutil.ignore_patterns("*.pt2"))
        return json.loads((Path(out_dir) / "export_report.json").read_text())

    monkeypatch.setattr(onnx_export, "export_run", already_exported)
    store = tmp_path / "store"
    result = runner.invoke(app, ["export", str(artifacts.run_dir), "--out", str(tmp_path / "export"),
                                 "--model-store", str(store), "--name", "textures"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in store.glob("*.mar")) == ["textures-features.mar", "textures.mar"]
    assert f"zoo serve start --model-store {store}" in result.output
