"""`zoo export` on a real trained run: graphs, metadata, parity, ORT accuracy, quantization gate, edge runtime.

One efficientnet_lite0 run (pretrained, head strategy) on a small digits sample is trained and exported
once per module; the tests read what that export wrote, with real ONNX Runtime sessions and real images.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_runs import make_run
from PIL import Image

from zoo.cli import app
from zoo.errors import ZooError
from zoo.export.onnx_export import export_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits_small(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "digits"
    write_sample("digits", out, seed=0, limit=200)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits_small) -> Path:
    """A run written by `zoo finetune` when it is installed, else by the run-directory contract directly."""
    out = tmp_path_factory.mktemp("runs") / "digits-lite0-head"
    try:
        from zoo import finetune
    except (ImportError, AttributeError):
        return make_run(out, digits_small)
    finetune(digits_small, model="efficientnet_lite0", strategy="head", augment=False, out=out, force=True,
             cache_dir=tmp_path_factory.mktemp("cache"))
    return out


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "export"
    # The gate is opened wide here so the figures of both variants can be checked; the refusal has its own test.
    report = export_run(trained_run, out, quantize=["int8", "fp16"], max_accuracy_drop=100.0, calibration_images=16)
    return out, report


# ---------------------------------------------------------------- files, graphs, metadata
def test_export_writes_the_contract_files(exported, trained_run):
    out, report = exported
    for name in ("classifier.onnx", "features.onnx", "preprocess.json", "labels.json", "export_report.json",
                 "classifier.int8.onnx", "classifier.fp16.onnx", "ood.npz"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == json.loads((trained_run / "labels.json").read_text())
    config = json.loads((trained_run / "config.json").read_text())
    assert json.loads((out / "preprocess.json").read_text()) == config["preprocess"]
    assert config["preprocess"]["input_size"] == config["image_size"]["size"]  # what --image-size chose
    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(report))
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging files were left behind"


@pytest.mark.parametrize("name,kind,outputs", [
    ("classifier.onnx", "classifier", ["logits", "probabilities", "features"]),  # features: for the OOD score
    ("features.onnx", "features", ["features"])])
def test_graphs_are_dynamic_checked_and_carry_metadata(exported, name, kind, outputs):
    out, _ = exported
    model = onnx.load(str(out / name))
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(dims[i].dim_param and not dims[i].dim_value for i in (0, 2, 3)), \
        "batch, height and width must be dynamic"
    assert [o.name for o in model.graph.output] == outputs
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["zoo.kind"] == kind and meta["zoo.model"] == "efficientnet_lite0"
    assert json.loads(meta["zoo.labels"]) == json.loads((out / "labels.json").read_text())
    assert json.loads(meta["zoo.preprocess"]) == json.loads((out / "preprocess.json").read_text())
    assert sorted(json.loads(meta["zoo.outputs"])) == sorted(outputs)


def test_export_writes_the_ood_summary_with_a_threshold_per_variant(exported):
    from zoo.edge import EdgeModel
    from zoo.inference import OodScorer

    out, report = exported
    o = report["ood"]
    scorer = OodScorer.load(out / "ood.npz")
    assert o["file"] == "ood.npz" and scorer.thresholds == o["thresholds"] and scorer.k == o["k"] == 20
    assert set(o["thresholds"]) == {"fp32", "int8", "fp16"} and o["feature_dim"] == scorer.dim == 1280
    assert o["bank"] == o["train_images"] and o["calibration"]["split"] == "val"
    for variant, rate in o["calibration"]["val_false_alarm_rate"].items():  # the 95th percentile: ~5% flagged
        assert abs(rate - 0.05) <= 1.0 / o["calibration"]["images"], variant
    # The classifier's own features output is the vector features.onnx computes: one forward pass serves both.
    image = sorted(Path(p) for p in report["parity"]["images"])[0]
    pooled = EdgeModel(out, variant="fp32").run(_input(out, image))["features"]
    alone = EdgeModel(out, kind="features", variant="fp32").features([image])[0].features
    assert np.abs(pooled[0] - alone).max() <= 1e-5 * max(1.0, float(np.abs(alone).max()))


def _input(out: Path, image: Path) -> np.ndarray:
    from zoo.preprocess import PreprocessConfig, preprocess

    return preprocess(image, PreprocessConfig.load(out / "preprocess.json"))[None]


# ---------------------------------------------------------------- parity with PyTorch
def test_parity_figures_in_the_report(exported):
    _, report = exported
    p = report["parity"]
    assert p["ok"] and p["max_abs_logits"] <= 1e-4 and p["top1_agreement"] == 1.0
    assert p["max_abs_features"] <= 1e-4 * max(1.0, max(c["features_scale"] for c in p["cases"]))  # both graphs
    assert p["batch_sizes"] == [1, 5]
    sizes = {tuple(s) for s in p["sizes"]}
    assert {(224, 224), (180, 320), (97, 301)} <= sizes  # square, non-square, odd on both sides
    assert len(p["cases"]) == len(sizes) * 2
    assert all(Path(name).is_file() for name in p["images"]), "parity must run on real validation images"
    assert report["checker"] == {"classifier.onnx": "passed (full_check)", "features.onnx": "passed (full_check)"}


def test_failed_parity_is_loud_and_publishes_nothing(trained_run, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "classifier.onnx").write_bytes(b"an older export")  # replaced with --force, so it must not survive
    # A zero tolerance cannot be met by float arithmetic in two different runtimes: the check must refuse.
    with pytest.raises(ZooError, match=r"max \|Δ logits\| .* against a tolerance of 0e\+00"):
        export_run(trained_run, out, parity_atol=0.0, parity_sizes=[(97, 301)], force=True)
    assert not (out / "classifier.onnx").exists() and not (out / "features.onnx").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] is False and report["parity"]["max_abs_logits"] > 0


# ---------------------------------------------------------------- accuracy with ONNX Runtime alone, no torch
def test_onnx_runtime_accuracy_without_torch_equals_metrics(exported, trained_run, digits_small):
    out, report = exported
    from zoo.data.folder import load_image_folder

    config = json.loads((trained_run / "config.json").read_text())
    data = load_image_folder(digits_small, val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    val = [[str(s.path), s.label] for s in data.val]
    script = (
        "import json, sys\n"
        "from zoo.edge import EdgeModel\n"
        "val = json.loads(sys.stdin.read())\n"
        f"edge = EdgeModel({str(out)!r}, variant='fp32')\n"  # the fp32 graph: what metrics.json scored
        "res = edge.predict([p for p, _ in val], top_k=1)\n"
        "acc = sum(r.label == edge.labels[y] for r, (_, y) in zip(res, val)) / len(val)\n"
        "print(json.dumps({'accuracy': acc, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(val), capture_output=True, text=True,
                          cwd=REPO, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False, "the edge path imported torch"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert abs(100 * (result["accuracy"] - metrics["accuracy"])) <= 0.5
    assert report["val_accuracy"]["metrics_json"] == pytest.approx(metrics["accuracy"])
    assert abs(report["val_accuracy"]["delta_points"]) <= 0.5


# ---------------------------------------------------------------- quantized variants and their accuracy gate
@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_variants_report_accuracy_and_speed(exported, variant):
    out, report = exported
    v = report["variants"][variant]
    assert v["status"] == "accepted" and (out / v["file"]).is_file()
    assert 0.0 <= v["val_accuracy"] <= 1.0 and v["val_images"] > 0
    assert v["drop_points"] == pytest.approx(100 * (v["fp32_val_accuracy"] - v["val_accuracy"]), abs=1e-2)
    assert v["speed_ratio"] > 0 and v["latency_ms"] > 0 and v["fp32_latency_ms"] > 0
    meta = {p.key: p.value for p in onnx.load(str(out / v["file"])).metadata_props}
    assert meta["zoo.precision"] == variant and meta["zoo.kind"] == "classifier"
    if variant == "int8":
        assert v["calibration_split"] == "train" and v["calibration_images"] > 0
        assert v["ops"]["quantized"].get("Conv", 0) >= 40, "the convolutions should run in int8"
        assert v["size_bytes"] < v["fp32_size_bytes"] / 2


def test_gate_refuses_a_variant_past_the_threshold(trained_run, tmp_path):
    out = tmp_path / "export"
    # A negative limit demands that int8 gain 101 points of accuracy: no variant can meet it.
    with pytest.raises(ZooError, match=r"classifier\.int8\.onnx loses .* more than the -101.0-point limit"):
        export_run(trained_run, out, quantize="int8", max_accuracy_drop=-101.0, parity_sizes=[(97, 301)],
                   calibration_images=16)
    assert not (out / "classifier.int8.onnx").exists()
    assert (out / "classifier.onnx").is_file(), "the fp32 export stays usable"
    report = json.loads((out / "export_report.json").read_text())
    assert report["variants"]["int8"]["status"] == "refused"


# ---------------------------------------------------------------- the command line
def test_cli_export_refuses_to_overwrite(runner, exported, trained_run):
    out, _ = exported
    before = (out / "classifier.onnx").stat().st_mtime_ns
    result = runner.invoke(app, ["export", str(trained_run), "--out", str(out), "--no-archive"])
    assert result.exit_code != 0
    assert "already holds an export" in result.output and "--force" in result.output
    assert (out / "classifier.onnx").stat().st_mtime_ns == before


def test_cli_export_help_and_bad_options(runner, trained_run, tmp_path):
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--opset", "--quantize", "--no-archive", "--force"):
        assert option in result.output
    bad_opset = runner.invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "x"), "--opset", "11"])
    assert bad_opset.exit_code == 2 and "choose an opset from 18" in bad_opset.output
    bad_quant = runner.invoke(app, ["export", str(trained_run), "--quantize", "int4"])
    assert bad_quant.exit_code != 0
    missing = runner.invoke(app, ["export", str(tmp_path / "no-such-run")])
    assert missing.exit_code != 0


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ZooError, match="config.json is missing"):
        export_run(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------- the edge runtime (zoo.edge)
def test_edge_top_k_never_exceeds_classes_and_reports_bad_files(exported, digits_small, tmp_path):
    from zoo.edge import EdgeModel

    out, _ = exported
    edge = EdgeModel(out)
    assert edge.kind == "classifier" and edge.provider == "CPUExecutionProvider"  # no usable GPU here
    good = sorted((digits_small / "val").rglob("*.png"))[:2]
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 10, 10)).save(buf, format="JPEG")
    truncated = buf.getvalue()[:200]
    results = edge.predict([good[0], tmp_path / "garbage.jpg", tmp_path / "empty.png", truncated, good[1]], top_k=50)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert all(r.error for r in results[1:4])
    for r in (results[0], results[4]):
        assert len(r.top_k) == len(edge.labels) == 10  # asked for 50, there are 10 classes
        assert abs(sum(r.top_k.values()) - 1.0) < 1e-4
        assert list(r.top_k.values()) == sorted(r.top_k.values(), reverse=True)


def test_edge_prediction_does_not_depend_on_the_batch(exported, digits_small, tmp_path):
    from zoo.edge import EdgeModel

    out, _ = exported
    edge = EdgeModel(out / "classifier.onnx")
    paths = sorted((digits_small / "val").rglob("*.png"))[:3]
    wide = tmp_path / "wide.png"
    Image.open(paths[0]).convert("RGB").resize((90, 40)).save(wide)  # a different shape in the same call
    sources = [paths[0], wide, paths[1], paths[2]]
    alone = [edge.predict([s], top_k=3)[0].top_k for s in sources]
    together = [r.top_k for r in edge.predict(sources, top_k=3, batch_size=8)]
    for a, b in zip(alone, together, strict=True):
        assert list(a) == list(b)
        assert max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_edge_reads_metadata_when_the_json_files_are_absent(exported, digits_small, tmp_path):
    from zoo.edge import EdgeModel

    out, _ = exported
    shutil.copy(out / "classifier.onnx", tmp_path / "model.onnx")
    shutil.copy(out / "features.onnx", tmp_path / "features.onnx")
    image = sorted((digits_small / "val").rglob("*.png"))[0]
    alone = EdgeModel(tmp_path / "model.onnx")
    assert alone.labels == json.loads((out / "labels.json").read_text())
    assert alone.predict([image])[0].top_k == EdgeModel(out, variant="fp32").predict([image])[0].top_k
    feats = EdgeModel(tmp_path, kind="features").features([image])[0].features
    assert feats.shape == (1280,) and np.isfinite(feats).all()


def test_edge_and_zoo_package_do_not_import_torch():
    script = ("import sys, zoo, zoo.edge, zoo.preprocess; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.stdout.strip() == "[]"


def test_pad_on_uint8_equals_the_float_round_trip():
    """fuse_quantized_pads must not change a single value (it only removes a dequantize/requantize pair)."""
    from onnx import TensorProto, helper, numpy_helper

    from zoo.export.quantize import fuse_quantized_pads
    from zoo.inference import CPU, open_session

    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(7, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             helper.make_node("Pad", ["xf", "pads"], ["pf"], mode="constant"),  # amounts known only at run time
             helper.make_node("QuantizeLinear", ["pf", "s", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, "h", "w"]),
                                           helper.make_tensor_value_info("pads", TensorProto.INT64, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "hp", "wp"])],
                              [scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    feeds = {"x": np.random.default_rng(0).uniform(-0.3, 1.0, (1, 2, 5, 7)).astype(np.float32),
             "pads": np.array([0, 0, 1, 0, 0, 0, 1, 2], np.int64)}
    before = open_session(model.SerializeToString(), [CPU]).run(None, feeds)[0]
    assert fuse_quantized_pads(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    after = open_session(model.SerializeToString(), [CPU]).run(None, feeds)[0]
    assert after.shape == (1, 2, 7, 9) and np.array_equal(before, after)


def test_edge_prefers_an_accelerator_and_always_keeps_the_cpu(monkeypatch):
    import onnxruntime as ort

    from zoo.inference import choose_providers

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # TensorRT: an engine per shape
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers() == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_quantizing_without_the_run_images_says_to_pass_data(trained_run, tmp_path):
    run = tmp_path / "moved-run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config.pop("data", None)
    config.pop("data_dir", None)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ZooError, match="--data"):
        export_run(run, tmp_path / "out", quantize="int8")
    assert not (tmp_path / "out").exists()
