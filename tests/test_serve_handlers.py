"""Handlers and archives without a server (a tiny ONNX model; fast).

The handlers run a whole handle() with a mock context, the way TorchServe's own handler tests do,
from a folder laid out exactly as TorchServe unpacks the archive. The real server is in test_serve.py.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import MockContext, bad_inputs, load_handler, sample_images, write_tiny_export

from zoo.errors import ZooError
from zoo.export.archive import stage_model_dir, write_archives


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("tiny-export"))


@pytest.fixture(scope="module")
def classifier(tiny_export, tmp_path_factory):
    model_dir = stage_model_dir(tiny_export, "classifier", "onnx", tmp_path_factory.mktemp("cls"))
    return load_handler(model_dir, "classifier")


@pytest.fixture(scope="module")
def features(tiny_export, tmp_path_factory):
    return load_handler(stage_model_dir(tiny_export, "features", "onnx", tmp_path_factory.mktemp("feat")), "features")


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return sample_images()


def _expected(tiny_export: Path, images: dict[str, bytes]) -> dict[str, dict[str, float]]:
    from zoo.edge import EdgeModel

    results = EdgeModel(tiny_export, kind="classifier").predict(list(images.values()), top_k=3, batch_size=1)
    return {name: r.top_k for name, r in zip(images, results, strict=True)}


# ---------------------------------------------------------------- request parsing
def test_every_request_form_gives_the_same_images(classifier):  # the fixture imports zoo_serving
    parse = sys.modules["zoo_serving"].parse_request
    png = sample_images()["wide-alpha.png"]
    b64 = base64.b64encode(png).decode()
    one = [{"body": png}, {"body": bytearray(png)}, {"body": {"image": b64}}, {"body": b64},
           {"body": json.dumps({"image": b64}).encode()}, {"data": f"data:image/png;base64,{b64}"}]
    for request in one:
        parsed = parse(request, 32)
        assert parsed.images == [png] and not parsed.many, request.keys()
    many = [{"body": {"images": [b64, b64]}}, {"body": [b64, b64]}, {"file1": png, "file2": png}]
    for request in many:
        parsed = parse(request, 32)
        assert parsed.images == [png, png] and parsed.many
    assert parse({"body": {"image": b64, "topk": 2}}, 32).options == {"topk": 2}
    assert parse({"file": png, "topk": b"1"}, 32).options == {"topk": "1"}


@pytest.mark.parametrize("request_, status, words", [
    ({}, 400, "empty"),
    ({"body": {"picture": "x"}}, 400, '"image"'),
    ({"body": {"image": "not base64!"}}, 400, "base64"),
    ({"body": [1, 2]}, 400, "base64 strings"),
    ({"body": "{not json"}, 400, "not valid JSON"),
    ({"body": {"images": ["aGk="] * 33}}, 413, "limit of 32"),
])
def test_malformed_requests_are_refused_with_a_reason(classifier, request_, status, words):
    serving = sys.modules["zoo_serving"]
    with pytest.raises(serving.RequestError) as e:
        serving.parse_request(request_, 32)
    assert e.value.status == status and words in str(e.value)


def test_topk_is_never_more_than_the_number_of_classes(classifier):
    serving = sys.modules["zoo_serving"]
    assert serving.topk_option(None, 5, 3) == 3
    assert serving.topk_option("2", 5, 3) == 2
    assert serving.topk_option(b"10", 5, 3) == 3
    for bad in ("0", "-1", "abc", "1.5", True, "", "9" * 5000, b"\xff"):
        with pytest.raises(serving.RequestError):
            serving.topk_option(bad, 5, 3)


# ---------------------------------------------------------------- whole handle() calls
def test_handle_answers_every_format_like_local_onnx_runtime(classifier, tiny_export, images):
    handler, _ = classifier
    context = MockContext(Path("."))
    responses = handler.handle([{"body": data} for data in images.values()], context)
    expected = _expected(tiny_export, images)
    for name, response in zip(images, responses, strict=True):
        answer = json.loads(response)
        assert list(answer) == list(expected[name]), name  # same labels in the same order
        assert max(abs(answer[k] - expected[name][k]) for k in answer) <= 1e-6, name
    assert context.status == {} and set(context.content_types.values()) == {"application/json"}


def test_bad_input_gets_4xx_for_that_request_only(classifier, tiny_export, images):
    handler, _ = classifier
    good = {k: images[k] for k in ("square.jpg", "cmyk.jpg", "tall-gray.png")}
    bad = bad_inputs()
    batch = [{"body": b} for b in bad.values()] + [{"body": g} for g in good.values()]
    context = MockContext(Path("."), headers=[{}] * len(batch))
    responses = handler.handle(batch, context)
    words = {"garbage": "not an image", "truncated.jpg": "truncated", "empty": "empty",
             "1x1.png": "1x1", "bomb.png": "too many pixels"}
    for i, name in enumerate(bad):
        code, _ = context.status[i]
        body = json.loads(responses[i])
        assert 400 <= code < 500 and body["code"] == code, name
        assert words[name] in body["message"] and body["message"].endswith("."), body["message"]
    alone = [json.loads(handler.handle([{"body": g}], MockContext(Path(".")))[0]) for g in good.values()]
    assert [json.loads(r) for r in responses[len(bad):]] == alone
    assert all(i not in context.status for i in range(len(bad), len(batch)))


def test_answers_do_not_depend_on_the_batch(classifier, images):
    handler, _ = classifier
    alone = {n: handler.handle([{"body": d}], MockContext(Path(".")))[0] for n, d in images.items()}
    names = list(images) * 2  # duplicates make same-shape groups of more than one image
    together = handler.handle([{"body": images[n]} for n in names], MockContext(Path(".")))
    assert together == [alone[n] for n in names]


def test_topk_from_header_and_json(classifier, images):
    handler, _ = classifier
    b64 = base64.b64encode(images["square.jpg"]).decode()
    batch = [{"body": images["square.jpg"]}, {"body": images["square.jpg"]}, {"body": {"image": b64, "topk": 2}},
             {"body": images["square.jpg"]}]
    context = MockContext(Path("."), headers=[{"X-Topk": "1"}, {}, {}, {"topk": "zero"}])
    responses = handler.handle(batch, context)
    assert len(json.loads(responses[0])) == 1
    assert len(json.loads(responses[1])) == 3  # the default of 5 is cut to the 3 classes
    assert len(json.loads(responses[2])) == 2
    assert context.status[3][0] == 400 and "topk" in json.loads(responses[3])["message"]


def test_many_images_in_one_request_come_back_in_order(classifier, images):
    handler, _ = classifier
    names = ["square.jpg", "exif-rotated.jpg", "palette.gif"]
    alone = [json.loads(handler.handle([{"body": images[n]}], MockContext(Path(".")))[0]) for n in names]
    b64 = [base64.b64encode(images[n]).decode() for n in names]
    response = handler.handle([{"body": {"images": b64}}], MockContext(Path(".")))[0]
    assert json.loads(response) == alone


def test_features_handler_returns_the_bottleneck_vector(features, tiny_export, images):
    from zoo.edge import EdgeModel

    handler, _ = features
    responses = handler.handle([{"body": d} for d in images.values()], MockContext(Path(".")))
    expected = EdgeModel(tiny_export, kind="features").features(list(images.values()))
    for response, result in zip(responses, expected, strict=True):
        vector = np.asarray(json.loads(response))
        assert vector.shape == (8,) and np.abs(vector - result.features).max() <= 1e-6


def test_archive_runs_where_zoo_cannot_be_imported(tiny_export, tmp_path, images):
    """The handler, zoo_serving and zoo_preprocess in a Python that has numpy, Pillow and
    onnxruntime but not the zoo package (-S: no .pth files, so no editable install)."""
    model_dir = stage_model_dir(tiny_export, "classifier", "onnx", tmp_path / "model")
    (tmp_path / "image.jpg").write_bytes(images["cmyk.jpg"])
    paths = sysconfig.get_paths()
    script = f"""
import json, sys
sys.path[:0] = [{str(model_dir)!r}, {paths['purelib']!r}, {paths['platlib']!r}]
try:
    import zoo
    sys.exit("zoo is importable here: " + str(zoo.__file__))
except ImportError:
    pass
import classifier_handler

class Context:
    system_properties = {{"model_dir": {str(model_dir)!r}, "gpu_id": None}}
    status = {{}}
    def set_response_status(self, code=200, phrase="", idx=0): self.status[idx] = code
    def set_response_content_type(self, idx, value): pass
    def set_response_header(self, idx, key, value): self.status[(idx, key)] = value
    def get_all_request_header(self, idx): return {{}}

handler = classifier_handler.ClassifierHandler()
context = Context()
handler.initialize(context)
good, bad = handler.handle([{{"body": open("image.jpg", "rb").read()}}, {{"body": b"junk"}}], context)
assert "zoo" not in sys.modules and context.status == {{1: 400, (0, "X-Zoo-Variant"): "fp32"}}, (
    sorted(sys.modules), context.status)
print(good)
"""
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == _expected(tiny_export, {"cmyk.jpg": images["cmyk.jpg"]})["cmyk.jpg"]


# ---------------------------------------------------------------- archives
def test_write_archives_packs_the_handler_preprocessing_and_model(tiny_export, tmp_path):
    store = tmp_path / "store"
    mars = write_archives(tiny_export, "tiny", store)
    assert [m.name for m in mars] == ["tiny.mar", "tiny-features.mar"]
    with zipfile.ZipFile(store / "tiny.mar") as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        settings = json.loads(z.read("serving.json"))
        assert z.read("zoo_preprocess.py") == Path(sys.modules["zoo.preprocess"].__file__).read_bytes()
        assert z.read("zoo_inference.py") == Path(sys.modules["zoo.inference"].__file__).read_bytes()
    assert {"classifier.onnx", "classifier_handler.py", "zoo_serving.py", "zoo_requests.py", "zoo_preprocess.py",
            "zoo_inference.py",
            "preprocess.json", "labels.json", "serving.json"} <= names
    assert manifest["model"]["handler"] == "classifier_handler.py" and manifest["model"]["modelName"] == "tiny"
    assert settings["runtime"] == "onnx" and settings["output"] == "probabilities"
    with zipfile.ZipFile(store / "tiny-features.mar") as z:
        assert "features.onnx" in z.namelist() and "classifier.onnx" not in z.namelist()
    assert not list(store.glob(".zoo-archive-*"))  # no staging left behind


def test_archive_mistakes_are_clear(tiny_export, tmp_path):
    with pytest.raises(ZooError, match="cannot name a TorchServe model"):
        write_archives(tiny_export, "1 bad name", tmp_path)
    with pytest.raises(ZooError, match="run `zoo export"):
        write_archives(tmp_path, "ok", tmp_path / "store")
    with pytest.raises(ZooError, match="needs the run directory"):
        write_archives(tiny_export, "ok", tmp_path / "store", runtime="torch")


def test_default_archive_name():
    from zoo.export.formats import default_archive_name

    assert default_archive_name(Path("runs/tex_head")) == "tex_head"
    assert default_archive_name(Path("runs/2024 run#1")) == "m2024-run-1"


def test_an_image_the_model_cannot_run_fails_alone(classifier, images):
    """A 2000x8 strip is 64x1 once resized (the tiny model's cap is 64); a model that refuses it must not
    take the batch down."""
    import io

    from PIL import Image

    handler, _ = classifier
    real = handler.model
    handler.model = lambda batch: real(batch) if batch.shape[2] >= 16 else np.linalg.inv(np.zeros((2, 3)))
    try:
        strip = io.BytesIO()
        Image.new("RGB", (2000, 8), (90, 90, 90)).save(strip, format="PNG")
        batch = [{"body": images["square.jpg"]}, {"body": strip.getvalue()}, {"body": images["cmyk.jpg"]}]
        context = MockContext(Path("."))
        responses = handler.handle(batch, context)
    finally:
        handler.model = real
    assert list(context.status) == [1] and context.status[1][0] == 400
    assert "64x1" in json.loads(responses[1])["message"]
    alone = [handler.handle([{"body": images[n]}], MockContext(Path(".")))[0] for n in ("square.jpg", "cmyk.jpg")]
    assert [responses[0], responses[2]] == alone
