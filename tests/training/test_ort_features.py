"""Bottleneck and stage features on ONNX Runtime: checked against torch when the graph is made, cached
per backbone and weights, and never mixed with torch's features in the cache."""
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zoo.backbones import create_model, get_spec
from zoo.data.folder import load_image_folder
from zoo.training import ort_features
from zoo.training.datasets import scan_images
from zoo.training.feature_cache import FeatureCache, cached_layer_features

LAYERS = ["stage2", "stage3"]  # a graph cut after stage3: the bottleneck graph is what every head run makes


@pytest.fixture(scope="module")
def records(tiny_textures):
    cfg = get_spec("efficientnet_lite0").preprocess_config()
    found, _ = scan_images(load_image_folder(tiny_textures).train, cfg, "scan")
    return found[:8], cfg


@pytest.fixture(scope="module")
def made(records, tmp_path_factory):
    """A cache folder in which the lite0 graph (bottleneck and stage3) was made once, and what it logged."""
    home = tmp_path_factory.mktemp("zoo-cache")
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_CACHE_DIR", str(home))
        mp.setattr(ort_features, "_LOADED", {})
        handler = _Records()
        logger = logging.getLogger("zoo")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            _features(model, records, FeatureCache(home / "made"), "onnxruntime", mp)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return home, handler.messages


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def cache_home(made, monkeypatch):
    """The folder of `made`, opened as by a new process."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(made[0]))
    monkeypatch.setattr(ort_features, "_LOADED", {})
    return made[0]


def _features(model, records, cache, engine, monkeypatch):
    monkeypatch.setenv(ort_features.ENGINE_ENV, engine)
    (recs, cfg) = records
    return cached_layer_features(model, recs, cfg, model_name="efficientnet_lite0", layers=LAYERS, view=None,
                                 seed=0, cache=cache, batch_size=4, workers=0, description=engine)


def test_ort_features_match_torch_and_their_cache_entries_never_mix(records, made, cache_home, tmp_path, monkeypatch):
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    cache = FeatureCache(tmp_path / "features")
    by_torch, hits, _ = _features(model, records, cache, "torch", monkeypatch)
    assert hits == 0
    by_ort, hits, _ = _features(model, records, cache, "onnxruntime", monkeypatch)
    assert hits == 0, "ONNX Runtime must not be handed torch's entries"
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 2 * len(LAYERS)
    for layer in LAYERS:
        scale = max(1.0, float(by_torch[layer].abs().max()))
        assert float((by_torch[layer] - by_ort[layer]).abs().max()) <= 1e-4 * scale
    # parity was checked and reported when the graph was made
    (report_file,) = (cache_home / "graphs").glob("*.json")
    report = json.loads(report_file.read_text())
    assert report["parity"]["ok"] and report["parity"]["max_relative_error"] <= 1e-4
    assert set(report["ms_per_batch_of_8"]) == {"torch", "onnxruntime"}
    assert any("feature graph for efficientnet_lite0" in m and "agrees with torch" in m for m in made[1])
    # both engines' entries now exist: each engine reads back its own
    assert _features(model, records, cache, "torch", monkeypatch)[1] == len(LAYERS)
    assert _features(model, records, cache, "onnxruntime", monkeypatch)[1] == len(LAYERS)


def test_a_graph_is_made_once_and_reused_from_disk(records, cache_home, tmp_path, monkeypatch):
    """`made` exported the graph in another "process"; this one must load it from disk."""
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()

    def no_export(*args, **kwargs):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(ort_features, "_export", no_export)
    _, hits, _ = _features(model, records, FeatureCache(tmp_path / "b"), "onnxruntime", monkeypatch)
    assert hits == 0 and len(list((cache_home / "graphs").glob("*.onnx"))) == 1


def test_a_pass_records_its_cost_and_a_read_back_reports_the_same(records, made, tmp_path, monkeypatch):
    """auto's small-data pilot budget is a share of this cost: it must not change with the cache's state,
    nor include the one-off making of the feature graph (made once per backbone, in `made`)."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(made[0]))
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    cache = FeatureCache(tmp_path / "cost")
    _, hits, computed = _features(model, records, cache, "onnxruntime", monkeypatch)
    assert hits == 0 and computed is not None and computed > 0
    ((made_seconds,),) = [[json.loads(p.read_text())["export_seconds"]] for p in (made[0] / "graphs").glob("*.json")]
    assert computed < made_seconds  # 8 images through the graph, not the graph's export
    _, hits, read_back = _features(model, records, cache, "onnxruntime", monkeypatch)
    assert hits == len(LAYERS) and read_back == computed
    # An entry that does not say (written before entries did) makes the cost unknown, not zero.
    for entry in (tmp_path / "cost").rglob("*.safetensors"):
        with safe_open(str(entry), framework="pt") as f:
            meta, features = f.metadata(), f.get_tensor("features")
        del meta["pass_seconds"]
        save_file({"features": features}, str(entry), metadata=meta)
    assert _features(model, records, cache, "onnxruntime", monkeypatch)[1:] == (len(LAYERS), None)


def test_other_weights_get_another_graph_and_a_gpu_model_stays_on_torch(records, cache_home, monkeypatch):
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    other = create_model("efficientnet_lite0", num_classes=None, pretrained=False).eval()
    assert ort_features._graph_key("m", model, None) != ort_features._graph_key("m", other, None)
    assert ort_features._graph_key("m", model, None) != ort_features._graph_key("m", model, "stage3")
    monkeypatch.setattr(ort_features, "_device", lambda model: torch.device("cuda", 0))
    monkeypatch.setenv(ort_features.ENGINE_ENV, "onnxruntime")
    assert ort_features.extractor(model, "m", None, 224) is None


def _two_stages(seed: int) -> "torch.nn.Module":
    from collections import OrderedDict

    from zoo.backbones import ZooModel

    torch.manual_seed(seed)
    conv = lambda c_in, c_out: torch.nn.Sequential(  # noqa: E731
        torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU())
    return ZooModel(OrderedDict(stage1=conv(3, 4), stage2=conv(4, 6)), feature_dim=6, num_classes=2,
                    name="two").eval()


def test_a_stage_graph_is_cut_from_the_whole_graph_of_the_same_weights(tmp_path, monkeypatch, caplog):
    """The advisor makes the whole backbone's graph; `svm` on a stage of it then needs no trace of its own."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(ort_features.ENGINE_ENV, "onnxruntime")
    monkeypatch.setattr(ort_features, "_LOADED", {})
    whole = _two_stages(0)
    made = ort_features.extractor(whole, "two", None, 64)
    assert made is not None and made.report["made"] == "traced" and set(made.report["cuts"]) == {"stage1", "stage2"}

    def no_export(*args, **kwargs):
        raise AssertionError("the stage graph should have been cut from the whole one")

    with monkeypatch.context() as m:
        m.setattr(ort_features, "_export", no_export)
        with caplog.at_level(logging.INFO, logger="zoo"):
            cut = ort_features.extractor(whole.truncated("stage1"), "two", "stage1", 64)
    assert cut is not None and cut.report["made"] == "cut from the whole backbone's graph"
    assert cut.report["parity"]["ok"]  # checked as a traced graph is
    assert "stage1 (cut from the whole backbone's graph): ONNX Runtime agrees" in caplog.text
    x = torch.randn(3, 3, 45, 70)
    with torch.no_grad():
        want = whole.stages.stage1(x).mean((2, 3))
    assert float((cut(x, ["stage1"])["stage1"] - want).abs().max()) < 1e-5
    # a damaged graph is made again (and cut again), not worked around on every run
    graph = next(r for r in (tmp_path / "cache" / "graphs").glob("*.json")
                 if json.loads(r.read_text())["deepest"] == "stage1").with_suffix(".onnx")
    graph.write_bytes(graph.read_bytes()[:200])
    monkeypatch.setattr(ort_features, "_LOADED", {})
    with caplog.at_level(logging.WARNING, logger="zoo"):
        again = ort_features.extractor(whole.truncated("stage1"), "two", "stage1", 64)
    assert "cannot be read" in caplog.text and again.report["made"] == "cut from the whole backbone's graph"
    assert float((again(x, ["stage1"])["stage1"] - want).abs().max()) < 1e-5
    # other weights up to the stage: traced, never cut from a graph of different weights
    other = _two_stages(1).truncated("stage1")
    assert ort_features.extractor(other, "two", "stage1", 64).report["made"] == "traced"


def test_a_run_that_wants_fewer_outputs_runs_a_graph_pruned_to_them(tmp_path, monkeypatch):
    """ONNX Runtime computes every output of a graph whatever a run asks for: head and svm want one."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(ort_features.ENGINE_ENV, "onnxruntime")
    monkeypatch.setattr(ort_features, "_LOADED", {})
    model = _two_stages(0)
    ext = ort_features.extractor(model, "two", None, 64)
    assert ext is not None and len(ext.layers) > 1
    x = torch.randn(2, 3, 40, 56)
    every = ext(x, ext.layers)
    assert ext._pruned == {}  # all outputs: the checked graph itself
    alone = ext(x, [None])
    (session,) = ext._pruned.values()
    assert [o.name for o in session.get_outputs()] == [ort_features.output_name(None)]
    assert torch.equal(alone[None], every[None])
    ext(x, [None])
    assert len(ext._pruned) == 1  # made once per set of outputs
