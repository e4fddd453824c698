"""The export cache: a run exported again reuses its traced graph, and gains nothing it should not.

Real graphs throughout: the session's lite0 export (serve_helpers) and small ZooModels traced by
torch.onnx.export itself.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from serve_helpers import exported

from zoo.backbones import ZooModel
from zoo.errors import ZooError
from zoo.export import graph_cache
from zoo.export.onnx_export import _export_combined, export_run
from zoo.run_dir import load_run


def _tiny(seed: int) -> ZooModel:
    torch.manual_seed(seed)
    stages = OrderedDict(stem=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU()))
    return ZooModel(stages, feature_dim=4, num_classes=2, name="tiny").eval()


def test_a_run_exported_again_reuses_its_graph_and_writes_the_same_files(tmp_path_factory, tmp_path):
    shared = exported(tmp_path_factory)  # traced once for the session's serving tests
    report = export_run(shared.run_dir, tmp_path / "again", data_dir=shared.data_dir)
    assert report["trace"]["graph"] == graph_cache.REUSED
    assert report["parity"]["ok"]  # checked as after any trace
    for name in ("classifier.onnx", "features.onnx"):
        assert (tmp_path / "again" / name).read_bytes() == (shared.export_dir / name).read_bytes(), name


def test_a_reused_graph_that_disagrees_with_the_weights_fails_parity(tmp_path_factory, tmp_path):
    """An entry is trusted no further than a fresh trace: here one holds another classifier's weights."""
    shared = exported(tmp_path_factory)
    run = load_run(shared.run_dir)
    entry = graph_cache.folder() / f"{graph_cache.key(run.model.eval(), 18)}.onnx"
    saved = entry.read_bytes()
    graph = onnx.load_from_string(saved)
    for init in graph.graph.initializer:
        if init.name.endswith("classifier.weight"):
            init.CopyFrom(numpy_helper.from_array(2 * numpy_helper.to_array(init), init.name))
    try:
        entry.write_bytes(graph.SerializeToString())
        with pytest.raises(ZooError, match="ONNX Runtime and PyTorch disagree"):
            export_run(shared.run_dir, tmp_path / "out", data_dir=shared.data_dir, parity_sizes=[(97, 301)])
        assert not (tmp_path / "out" / "classifier.onnx").exists()
        assert json.loads((tmp_path / "out" / "export_report.json").read_text())["trace"]["graph"] == graph_cache.REUSED
    finally:
        entry.write_bytes(saved)


def test_other_weights_are_traced_again_and_a_damaged_entry_is_replaced(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    a, b = _tiny(0), _tiny(1)
    assert graph_cache.key(a, 18) != graph_cache.key(b, 18) and graph_cache.key(a, 18) != graph_cache.key(a, 19)
    traces = []

    def trace(model):
        return lambda: traces.append(model) or _export_combined(model, 18)

    first, origin = graph_cache.traced_graph(a, 18, trace(a))
    assert origin == graph_cache.TRACED and len(traces) == 1
    again, origin = graph_cache.traced_graph(a, 18, trace(a))
    assert origin == graph_cache.REUSED and len(traces) == 1
    assert again.SerializeToString() == first.SerializeToString()
    assert graph_cache.traced_graph(b, 18, trace(b))[1] == graph_cache.TRACED and len(traces) == 2

    entry = graph_cache.folder() / f"{graph_cache.key(a, 18)}.onnx"
    entry.write_bytes(entry.read_bytes()[:100])  # a truncated write from another tool
    with caplog.at_level(logging.WARNING):
        graph, origin = graph_cache.traced_graph(a, 18, trace(a))
    assert origin == graph_cache.TRACED and "does not load" in caplog.text
    assert entry.read_bytes() == first.SerializeToString()  # replaced by the new trace
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 56)).astype(np.float32)
    import onnxruntime as ort

    logits = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x})[0]
    with torch.no_grad():
        assert np.abs(logits - a(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_the_cache_keeps_to_its_size_and_zero_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    models = [_tiny(seed) for seed in range(3)]
    graphs = [_export_combined(m, 18) for m in models]
    size = len(graphs[0].SerializeToString())
    monkeypatch.setenv(graph_cache.CACHE_MB_ENV, str(2.5 * size / 2**20))  # room for two entries
    for m, g in zip(models, graphs, strict=True):
        graph_cache.traced_graph(m, 18, lambda g=g: g)
    kept = {p.name for p in graph_cache.folder().glob("*.onnx")}
    assert kept == {f"{graph_cache.key(m, 18)}.onnx" for m in models[1:]}  # the least recently used went first

    shutil.rmtree(graph_cache.folder())
    monkeypatch.setenv(graph_cache.CACHE_MB_ENV, "0")
    assert graph_cache.traced_graph(models[0], 18, lambda: graphs[0])[1] == graph_cache.TRACED
    assert not graph_cache.folder().exists()
    monkeypatch.setenv(graph_cache.CACHE_MB_ENV, "lots")
    assert graph_cache.limit_bytes() == graph_cache.DEFAULT_MB * 2**20


def test_the_cache_lives_beside_the_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    assert graph_cache.folder() == Path(tmp_path) / "export-graphs"
