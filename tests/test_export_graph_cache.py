"""The export cache: an architecture traced once is exported again without torch's trace, with its
own weights filled in, and a cache entry never changes what an export gives.

Real graphs throughout: the session's lite0 export (serve_helpers) and small ZooModels traced by
torch.onnx.export itself.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from serve_helpers import exported

from zoo.backbones import ZooModel
from zoo.export import graph_cache
from zoo.export.onnx_export import export_run
from zoo.export.trace import _Exportable, _trace, combined_graph
from zoo.inference import CPU, open_session


def _tiny(seed: int, act: type[torch.nn.Module] = torch.nn.ReLU, classes: int = 2) -> ZooModel:
    torch.manual_seed(seed)
    stages = OrderedDict(stem=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.BatchNorm2d(4), act()))
    return ZooModel(stages, feature_dim=4, num_classes=classes, name="tiny").eval()


def _outputs(graph: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return open_session(graph.SerializeToString(), [CPU]).run(None, {"image": x})


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_run_exported_again_reuses_the_graph(tmp_path_factory, tmp_path):
    shared = exported(tmp_path_factory)  # the session's lite0 export (3 classes)
    report = export_run(shared.run_dir, tmp_path / "again", data_dir=shared.data_dir)
    assert report["trace"]["graph"] == graph_cache.REUSED
    assert report["parity"]["ok"]  # checked as after any trace
    for name in ("classifier.onnx", "features.onnx"):
        assert (tmp_path / "again" / name).read_bytes() == (shared.export_dir / name).read_bytes(), name


def test_other_weights_of_the_architecture_reuse_the_graph_and_give_a_fresh_trace_s_answers(home, monkeypatch):
    a, b = _tiny(0), _tiny(1)
    assert graph_cache.key(_Exportable(a), 18) == graph_cache.key(_Exportable(b), 18)  # values are not part of it
    assert graph_cache.key(_Exportable(a), 18) != graph_cache.key(_Exportable(a), 19)
    assert graph_cache.key(_Exportable(a), 18) != graph_cache.key(_Exportable(_tiny(0, torch.nn.Hardswish)), 18)
    assert combined_graph(a, 18)[1] == graph_cache.TRACED
    reused, origin = combined_graph(b, 18)
    assert origin == graph_cache.REUSED
    monkeypatch.setenv(graph_cache.ENV, "0")
    fresh, origin = combined_graph(b, 18)
    assert origin == graph_cache.TRACED
    x = np.random.default_rng(0).standard_normal((3, 3, 41, 77)).astype(np.float32)
    for got, want in zip(_outputs(reused, x), _outputs(fresh, x), strict=True):
        assert np.array_equal(got, want)
    with torch.no_grad():
        assert np.abs(_outputs(reused, x)[0] - b(torch.from_numpy(x)).numpy()).max() < 1e-5
    (entry,) = home.joinpath("export-graphs").glob("*.onnx")  # the weights stay out of the cache
    held = [i for i in onnx.load(str(entry)).graph.initializer if i.name.removeprefix("model.") in b.state_dict()]
    assert held and not any(i.raw_data or i.float_data for i in held)


def test_a_run_with_another_number_of_classes_reuses_the_graph_and_matches_a_fresh_trace(home, monkeypatch):
    two, five = _tiny(0), _tiny(1, classes=5)
    assert graph_cache.key(_Exportable(two), 18) == graph_cache.key(_Exportable(five), 18)
    assert combined_graph(two, 18)[1] == graph_cache.TRACED
    reused, origin = combined_graph(five, 18)
    assert origin == graph_cache.REUSED
    monkeypatch.setenv(graph_cache.ENV, "0")
    fresh = combined_graph(five, 18)[0]
    assert reused.SerializeToString() == fresh.SerializeToString()  # shapes and all, as if traced for 5
    x = np.random.default_rng(2).standard_normal((3, 3, 41, 77)).astype(np.float32)
    logits, probabilities, _ = _outputs(reused, x)
    assert logits.shape == probabilities.shape == (3, 5)
    with torch.no_grad():
        assert np.abs(logits - five(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_a_damaged_or_foreign_entry_is_traced_again_and_replaced(home, caplog):
    relu, hardtanh = _tiny(0), _tiny(0, torch.nn.Hardtanh)  # the same tensors, another computation
    combined_graph(relu, 18)
    entry = home / "export-graphs" / f"{graph_cache.key(_Exportable(relu), 18)}.onnx"
    good = entry.read_bytes()
    entry.write_bytes(good[:100])  # a truncated write from another tool
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert combined_graph(relu, 18)[1] == graph_cache.TRACED
    assert "cannot be reused" in caplog.text and entry.read_bytes() == good

    combined_graph(hardtanh, 18)
    foreign = home / "export-graphs" / f"{graph_cache.key(_Exportable(hardtanh), 18)}.onnx"
    entry.write_bytes(foreign.read_bytes())  # fills with relu's tensors, computes hardtanh
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zoo"):
        graph, origin = combined_graph(relu, 18)
    assert origin == graph_cache.TRACED and "differs from PyTorch" in caplog.text
    assert entry.read_bytes() == good
    x = np.random.default_rng(1).standard_normal((2, 3, 50, 60)).astype(np.float32) * 3
    with torch.no_grad():
        assert np.abs(_outputs(graph, x)[0] - relu(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_an_entry_missing_a_tensor_of_the_model_is_not_used(home):
    model = _tiny(0)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    unoptimized = graph_cache.stripped(_trace(model, 18), state)
    with pytest.raises(KeyError, match="has no tensor"):
        graph_cache.filled(unoptimized, {k: v for k, v in state.items() if not k.endswith("classifier.weight")})
    with pytest.raises(ValueError, match="in the model"):
        graph_cache.filled(unoptimized, {**state, "model.stages.stem.0.weight": torch.zeros(4, 3, 5, 5)})
    with pytest.raises(ValueError, match="in the model"):  # another number of classes, yes; other features, no
        graph_cache.filled(unoptimized, {**state, "model.classifier.weight": torch.zeros(2, 5)})


def test_turned_off_nothing_is_written(home, monkeypatch):
    monkeypatch.setenv(graph_cache.ENV, "0")
    assert combined_graph(_tiny(0), 18)[1] == graph_cache.TRACED
    assert not (home / "export-graphs").exists()
