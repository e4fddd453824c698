"""Damaged files on the export and edge side: one sentence each, never a traceback, never a wrong answer.

Real files are damaged by the tests: a run directory's model.safetensors (truncated, garbage, empty),
preprocess.json, labels.json that no longer match the graph's outputs, and the paths `zoo predict` is
given. The models are real: lite0 run directories, and the tiny ONNX export on ONNX Runtime.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import load_handler, write_run, write_tiny_export

from zoo.cli import app
from zoo.export.archive import stage_model_dir


def _one_sentence(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_tiny_export(tmp_path / "export")


def _png(path: Path, size=(40, 30)) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 140, 20)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_export_refuses_damaged_weights_before_writing(runner, run_dir, tmp_path, damage):
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 3], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    result = runner.invoke(app, ["export", str(copy), "--out", str(tmp_path / "out"), "--model-store",
                                 str(tmp_path / "store")])
    assert "model.safetensors is damaged or was changed" in _one_sentence(result, 1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_weights_without_a_checksum_are_still_read_safely(run_dir, tmp_path):
    """A run whose run_complete.json has no entry for the weights: safetensors' own error, as one sentence."""
    from zoo.errors import ZooError
    from zoo.run_dir import COMPLETE, load_run

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / COMPLETE).write_text(json.dumps({"files": {}}))
    (copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ZooError, match="not a readable safetensors file"):
        load_run(copy)


def test_a_run_from_before_run_complete_json_still_loads_and_is_not_retrained(run_dir, tmp_path):
    """Runs written before the marker existed (weights written last, after metrics.json) stay usable: they load,
    and --resume reports them finished instead of training them again over their weights."""
    from zoo.run_dir import COMPLETE, is_complete, load_run
    from zoo.training.options import run_dir_state

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / COMPLETE).unlink()
    (copy / "metrics.json").write_text(json.dumps({"accuracy": 1.0}))  # what a finished run of then had
    assert load_run(copy).model is not None and is_complete(copy)
    assert run_dir_state(copy, resume=True, force=False) == "complete"
    (copy / "model.safetensors").unlink()  # without its weights it never finished
    assert not is_complete(copy)


def test_export_checks_the_archive_name_first(runner, run_dir, tmp_path):
    """Before: checked after a 2-minute export, and "name\\n" passed the `$` anchor and left a file with a
    newline in its name and half an archive pair in the model store."""
    for name in ("lite0\n", "1st", "a b", "x/y"):
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "out"), "--model-store",
                                     str(tmp_path / "store"), "--name", name])
        assert "cannot name a TorchServe model" in _one_sentence(result, 2)
        assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"input_size": 224}',
                                     '{"input_size": -5, "mean": [0, 0, 0], "std": [1, 1, 1]}',
                                     '{"input_size": 32, "mean": [0, 0], "std": [1, 1, 0]}',
                                     '{"input_size": 32, "mean": "abc", "std": [1, 1, 1], "version": "x"}'])
def test_a_bad_preprocess_json_is_one_sentence(runner, tiny, tmp_path, content):
    (tiny / "preprocess.json").write_text(content)
    image = _png(tmp_path / "a.png")
    result = runner.invoke(app, ["predict", str(image), "--model", str(tiny)])
    assert "re-export" in _one_sentence(result, 1) or "re-run `zoo export`" in result.output


@pytest.mark.parametrize("labels", [["cat", "dog"], ["cat", "dog", "fish", "bird"]])
def test_labels_must_match_the_graph_outputs(runner, tiny, tmp_path, labels):
    """Before: 2 labels for 3 outputs was an IndexError; 4 labels printed wrong labels with exit code 0."""
    (tiny / "labels.json").write_text(json.dumps(labels))
    result = runner.invoke(app, ["predict", str(_png(tmp_path / "a.png")), "--model", str(tiny)])
    assert f"name {len(labels)} classes but the model has 3 outputs" in _one_sentence(result, 1)
    model_dir = stage_model_dir(tiny, "classifier", "onnx", tmp_path / "staged")
    with pytest.raises(ValueError, match=f"names {len(labels)} classes but classifier.onnx has 3 outputs"):
        load_handler(model_dir, "classifier")  # the served model refuses to load instead of answering wrongly


def test_every_input_path_gets_one_row_and_failures_set_the_exit_code(runner, tiny, tmp_path):
    """Before: a folder named x.jpg, a link loop and a dangling link gave no line at all; one missing path
    aborted the whole command; and the exit code was 0 with 5 of 8 inputs unreadable."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good = [_png(folder / "a.png"), _png(folder / "b.png", (50, 20))]
    (folder / "x.jpg").mkdir()
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "notes.jpg").write_text("not an image")
    missing = tmp_path / "missing.png"
    lone = _png(tmp_path / "lone.png")
    result = runner.invoke(app, ["predict", str(folder), str(missing), str(lone), "--model", str(tiny), "--json"])
    assert result.exit_code == 1, result.output
    rows = {Path(r["path"]).name: r for r in json.loads(result.output)}
    assert set(rows) == {"a.png", "b.png", "x.jpg", "loop.png", "dangling.jpg", "notes.jpg", "missing.png",
                         "lone.png"}
    assert all(rows[p.name]["error"] is None and rows[p.name]["top_k"] for p in [*good, lone])
    for name in ("x.jpg", "loop.png", "dangling.jpg", "notes.jpg", "missing.png"):
        assert rows[name]["error"] and not rows[name]["top_k"], name
    ok = runner.invoke(app, ["predict", *map(str, good), "--model", str(tiny), "--json"])
    assert ok.exit_code == 0, ok.output
