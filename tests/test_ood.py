"""The out-of-distribution score without a real model (fast): the scorer, the threshold calibration,
ood.npz's safe loading, exports made before it, and the field in every answer (edge, `zoo predict`,
the handlers, the client). The real lite0 export, served by a real TorchServe, is in test_serve.py."""
from __future__ import annotations

import base64
import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import MockContext, load_handler, sample_images, write_tiny_export

from zoo.cli import app
from zoo.edge import EdgeError, EdgeModel
from zoo.export.archive import stage_model_dir
from zoo.export.ood import PERCENTILE, choose_k, held_out_scores, make_scorer, save, threshold
from zoo.inference import OOD_FILE, OodError, OodScorer, load_ood, ood_field
from zoo.predict import format_csv, format_text
from zoo.serve.client import split_ood


def _cloud(n: int, dim: int = 16, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)) + shift


# ---------------------------------------------------------------- the scorer
def test_score_is_the_cosine_distance_to_the_kth_nearest_training_feature():
    train, queries = _cloud(50), _cloud(7, seed=1)
    scorer = OodScorer(train / np.linalg.norm(train, axis=1, keepdims=True), 5, {"fp32": 0.5})
    brute = []
    for q in queries:
        cos = [q @ t / np.linalg.norm(q) / np.linalg.norm(t) for t in train]
        brute.append(sorted(1 - c for c in cos)[4])
    assert np.allclose(scorer.score(queries), brute, atol=1e-12)
    assert np.allclose(scorer.score(queries * 7.5), scorer.score(queries))  # scale does not matter
    assert scorer.score(queries[0]).shape == (1,)  # one vector is one image
    with pytest.raises(ValueError, match="16-dimensional"):
        scorer.score(np.zeros((2, 3)))


def test_far_features_score_higher_and_the_field_says_so():
    scorer = make_scorer(_cloud(200, shift=3.0), {"fp32": 0.1, "int8": 0.2})
    near, far = scorer.score(_cloud(20, seed=2, shift=3.0)), scorer.score(_cloud(20, seed=3, shift=-3.0))
    assert near.max() < far.min()
    fields = scorer.fields(_cloud(2, seed=3, shift=-3.0), variant="int8")
    assert fields[0]["threshold"] == 0.2 and fields[0]["out_of_distribution"] is True
    assert scorer.threshold("fp16") == 0.1  # a variant calibrated without its own threshold uses fp32's
    assert json.loads(json.dumps(fields)) == fields  # plain JSON types
    assert ood_field(0.3, 0.3) == {"score": 0.3, "threshold": 0.3, "out_of_distribution": False}


def test_k_shrinks_with_a_small_bank():
    assert choose_k(2000) == choose_k(100) == 20
    assert choose_k(45) == 9 and choose_k(3) == 1


# ---------------------------------------------------------------- calibration
def test_threshold_is_the_95th_percentile_so_5_percent_of_val_is_flagged():
    scores = np.random.default_rng(0).gamma(2.0, size=1000)
    t = threshold(scores)
    assert PERCENTILE == 95.0 and t == pytest.approx(np.percentile(scores, 95))
    assert (scores > t).mean() == pytest.approx(0.05, abs=0.001)


def test_without_val_each_training_image_is_scored_against_the_other_folds():
    train = _cloud(60)
    labels = np.repeat([0, 1, 2], 20)
    held = held_out_scores(train, labels)
    fold = (np.arange(60) % 20) % 5  # each class's members, in order, dealt into 5 folds
    for i in (0, 1, 23, 59):
        assert held[i] == pytest.approx(make_scorer(train[fold != fold[i]]).score(train[i:i + 1])[0], abs=1e-12)


# ---------------------------------------------------------------- ood.npz, loaded safely
@pytest.fixture
def summary(tmp_path) -> Path:
    save(tmp_path / OOD_FILE, make_scorer(_cloud(40), {"fp32": 0.25, "int8": 0.3}, {"method": "test"}))
    return tmp_path / OOD_FILE


def test_the_summary_round_trips_through_ood_npz(summary):
    loaded = OodScorer.load(summary)
    again = make_scorer(_cloud(40))
    assert loaded.thresholds == {"fp32": 0.25, "int8": 0.3} and loaded.k == again.k == 8
    assert np.array_equal(loaded.score(_cloud(5, seed=4)), again.score(_cloud(5, seed=4)))  # the stored float16 bank
    with np.load(summary, allow_pickle=False) as data:
        assert sorted(data.files) == ["bank", "meta"] and data["bank"].dtype == np.float16


def _one_sentence(message: str, path: Path) -> None:
    assert str(path) in message and message.endswith(".") and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign npz", "pickled meta", "wrong format",
                                    "k too large", "no fp32 threshold", "nan in the bank"])
def test_a_damaged_summary_is_one_sentence_and_never_unpickled(summary, damage):
    good = summary.read_bytes()
    arrays = dict(np.load(summary, allow_pickle=False))
    meta = json.loads(str(arrays["meta"]))
    if damage == "truncated":
        summary.write_bytes(good[: len(good) // 3])
    elif damage == "garbage":
        summary.write_bytes(b"\x00\x01not a zip" * 50)
    elif damage == "empty":
        summary.write_bytes(b"")
    elif damage == "foreign npz":
        np.savez(summary, weights=np.zeros(3))
    elif damage == "pickled meta":  # an object array needs pickle: refused, never run
        np.savez(summary, bank=arrays["bank"], meta=np.array([{"k": 1}], dtype=object))
    else:
        if damage == "wrong format":
            meta["format"] = "something-else"
        elif damage == "k too large":
            meta["k"] = 10_000
        elif damage == "no fp32 threshold":
            meta["thresholds"] = {"int8": 0.3}
        elif damage == "nan in the bank":
            arrays["bank"][0, 0] = np.nan
        np.savez(summary, bank=arrays["bank"], meta=np.array(json.dumps(meta)))
    with pytest.raises(OodError) as e:
        OodScorer.load(summary)
    _one_sentence(str(e.value), summary)


def test_a_pickle_bomb_is_never_run(tmp_path):
    ran = []

    class Bomb:
        def __reduce__(self):
            return (ran.append, ("ran",))

    path = tmp_path / OOD_FILE
    path.write_bytes(pickle.dumps(Bomb()))
    with pytest.raises(OodError):
        OodScorer.load(path)
    np.savez(path, bank=np.zeros((4, 3), np.float16), meta=np.array([Bomb()], dtype=object))
    with pytest.raises(OodError):
        OodScorer.load(path)
    assert ran == []


# ---------------------------------------------------------------- the edge and `zoo predict`
@pytest.fixture(scope="module")
def tiny_ood(tmp_path_factory) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("tiny-ood"), ood=True)


@pytest.fixture(scope="module")
def tiny_old(tmp_path_factory) -> Path:
    """An export as zoo wrote them before the OOD score: no ood.npz, a classifier without a features output."""
    return write_tiny_export(tmp_path_factory.mktemp("tiny-old"))


def test_edge_results_carry_the_field_from_the_same_forward_pass(tiny_ood):
    images = list(sample_images().values())
    edge = EdgeModel(tiny_ood)
    results = edge.predict(images, top_k=2, batch_size=4)
    vectors = np.stack([r.features for r in EdgeModel(tiny_ood, kind="features").features(images)])
    want = OodScorer.load(tiny_ood / OOD_FILE).fields(vectors)
    for r, w in zip(results, want, strict=True):
        assert r.ood["threshold"] == w["threshold"] == 0.05
        assert abs(r.ood["score"] - w["score"]) <= 1e-6 and r.ood["out_of_distribution"] == w["out_of_distribution"]


class _Records(logging.Handler):
    """Every record of one logger, whatever the CLI configured for zoo's logger before (it stops propagation)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)  # setLevel, not .level =: it also clears the logger's cache
        self.logger.addHandler(self)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_old_export_answers_without_the_field_and_says_so_once(tiny_old):
    with _Records("zoo.inference") as records:
        edge = EdgeModel(tiny_old)
        results = edge.predict(list(sample_images().values())[:3])
    assert edge.ood is None and all(r.ok and r.ood is None for r in results)
    assert len(records) == 1 and "holds no ood.npz" in records[0].getMessage()
    assert records[0].levelno == logging.INFO


def test_zoo_predict_shows_the_field_in_every_format(tiny_ood, tiny_old, runner, tmp_path):
    image = tmp_path / "square.jpg"
    image.write_bytes(sample_images()["square.jpg"])
    want = EdgeModel(tiny_ood).predict([image])[0].ood
    rows = json.loads(runner.invoke(app, ["predict", str(image), "--model", str(tiny_ood), "--json"]).stdout)
    assert rows[0]["ood"] == want
    csv = runner.invoke(app, ["predict", str(image), "--model", str(tiny_ood), "--csv"]).stdout.splitlines()
    assert csv[0].endswith("ood_score,ood_threshold,out_of_distribution")
    assert csv[1].endswith(f"{want['score']:.6f},{want['threshold']:.6f},{str(want['out_of_distribution']).lower()}")
    text = runner.invoke(app, ["predict", str(image), "--model", str(tiny_ood)]).stdout
    assert f"ood score {want['score']:.3f}, threshold 0.050" in text
    old = json.loads(runner.invoke(app, ["predict", str(image), "--model", str(tiny_old), "--json"]).stdout)
    assert old[0]["ood"] is None and old[0]["error"] is None


def test_a_damaged_summary_stops_the_edge_with_one_sentence(tiny_ood, runner, tmp_path):
    broken = Path(shutil.copytree(tiny_ood, tmp_path / "export"))
    (broken / OOD_FILE).write_bytes((broken / OOD_FILE).read_bytes()[:100])
    with pytest.raises(EdgeError) as e:
        EdgeModel(broken)
    _one_sentence(str(e.value), broken / OOD_FILE)
    image = tmp_path / "a.png"
    image.write_bytes(sample_images()["wide-alpha.png"])
    result = runner.invoke(app, ["predict", str(image), "--model", str(broken)])
    assert result.exit_code == 1 and "is damaged" in result.output and "Traceback" not in result.output
    assert load_ood(tmp_path) is None  # no file: None, not an error


def test_text_and_csv_without_a_summary_stay_as_they_were():
    rows = [{"path": "a.png", "top_k": {"cat": 0.9}, "error": None, "variant": "fp32", "ood": None}]
    assert format_text(rows) == "a.png: cat 0.900"
    assert format_csv(rows).splitlines()[1] == "a.png,1,cat,0.900000,,fp32,,,"


# ---------------------------------------------------------------- the handlers and the client
def test_handler_answers_carry_the_same_field_as_the_edge(tiny_ood, tmp_path):
    images = sample_images()
    handler, _ = load_handler(stage_model_dir(tiny_ood, "classifier", "onnx", tmp_path / "cls"), "classifier")
    responses = handler.handle([{"body": d} for d in images.values()], MockContext(Path(".")))
    local = EdgeModel(tiny_ood).predict(list(images.values()), top_k=3)
    for response, want in zip(responses, local, strict=True):
        answer = json.loads(response)
        assert list(answer)[-1] == "ood"  # the labels first, as before, then the field
        top, ood = split_ood(answer)
        assert list(top) == list(want.top_k) and abs(ood["score"] - want.ood["score"]) <= 1e-6
        assert ood["threshold"] == want.ood["threshold"]
    b64 = [base64.b64encode(d).decode() for d in list(images.values())[:2]]
    many = json.loads(handler.handle([{"body": {"images": b64}}], MockContext(Path(".")))[0])
    assert len(many) == 2 and all("ood" in a for a in many)
    features, _ = load_handler(stage_model_dir(tiny_ood, "features", "onnx", tmp_path / "feat"), "features")
    assert (tmp_path / "feat" / OOD_FILE).is_file()  # both archives carry the summary
    vector = json.loads(features.handle([{"body": images["square.jpg"]}], MockContext(Path(".")))[0])
    assert len(vector) == 8  # the features answer is unchanged


def test_handler_of_an_old_export_answers_as_before(tiny_old, tmp_path):
    with _Records("zoo_serving") as records:
        handler, _ = load_handler(stage_model_dir(tiny_old, "classifier", "onnx", tmp_path / "cls"), "classifier")
    answer = json.loads(handler.handle([{"body": sample_images()["square.jpg"]}], MockContext(Path(".")))[0])
    assert "ood" not in answer and len(answer) == 3
    assert sum("holds no OOD summary" in r.getMessage() for r in records) == 1
    settings = json.loads((tmp_path / "cls" / "serving.json").read_text())
    assert settings["ood_file"] is None


def test_a_damaged_summary_in_an_archive_stops_the_model_loading(tiny_ood, tmp_path):
    stage = stage_model_dir(tiny_ood, "classifier", "onnx", tmp_path / "cls")
    (stage / OOD_FILE).write_bytes(b"broken")
    with pytest.raises(ValueError) as e:  # the archive's own copy of OodError (zoo_inference), a ValueError
        load_handler(stage, "classifier")
    assert type(e.value).__name__ == "OodError"
    _one_sentence(str(e.value), stage / OOD_FILE)


def test_the_client_tells_the_field_from_the_labels():
    assert split_ood({"cat": 0.9, "dog": 0.1, "ood": {"score": 1.0, "threshold": 0.5, "out_of_distribution": True}}) \
        == ({"cat": 0.9, "dog": 0.1}, {"score": 1.0, "threshold": 0.5, "out_of_distribution": True})
    assert split_ood({"cat": 0.9}) == ({"cat": 0.9}, None)  # an archive without a summary
    assert split_ood({"ood": 0.7, "cat": 0.3}) == ({"ood": 0.7, "cat": 0.3}, None)  # a class named "ood"
    with pytest.raises(ValueError):
        split_ood([{"cat": 1.0}])


def test_a_summary_beside_a_graph_without_features_is_a_warning_not_an_error(tiny_old, tiny_ood, tmp_path):
    """An old classifier.onnx (no features output) with a new ood.npz: answers as before, one warning."""
    mixed = Path(shutil.copytree(tiny_old, tmp_path / "export"))
    shutil.copyfile(tiny_ood / OOD_FILE, mixed / OOD_FILE)
    with _Records("zoo.edge") as records:
        edge = EdgeModel(mixed)
    assert edge.ood is None and edge.predict([sample_images()["square.jpg"]])[0].ood is None
    assert [r.levelno for r in records] == [logging.WARNING] and "no features output" in records[0].getMessage()
    with _Records("zoo_serving") as records:
        handler, _ = load_handler(stage_model_dir(mixed, "classifier", "onnx", tmp_path / "cls"), "classifier")
    answer = json.loads(handler.handle([{"body": sample_images()["square.jpg"]}], MockContext(Path(".")))[0])
    assert "ood" not in answer and any("no features output" in r.getMessage() for r in records)
