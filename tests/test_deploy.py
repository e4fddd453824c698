"""What passed the gate is what runs: deploy.json, the features gate, --deploy, and the fp32 fallback.

One lite0 run on the textures sample (pretrained backbone, a head fitted on its features) is
exported once with `--quantize int8`; every test reads that export or a copy it may damage. The
serving test starts a real TorchServe and stops it even when a test fails.
"""
from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from export_runs import make_run

from zoo.cli import app
from zoo.edge import EdgeError, EdgeModel
from zoo.errors import UsageError, ZooError
from zoo.export import deploy
from zoo.export.onnx_export import export_run


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("deploy-data") / "textures"
    write_sample("textures", out, seed=0, limit=60)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, textures) -> Path:
    return make_run(tmp_path_factory.mktemp("deploy-run") / "run", textures)


@pytest.fixture(scope="module")
def int8_export(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("deploy-export") / "export"
    # --deploy int8 makes the choice independent of the speed measured on a busy machine; auto has its own tests.
    report = export_run(run_dir, out, quantize="int8", deploy="int8", parity_sizes=[(97, 301)], calibration_images=16)
    return out, report


def _copy(export_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


def _corrupt(path: Path) -> None:
    """Keep the first third of the file: a truncated download or a full disk."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# ---------------------------------------------------------------- the manifest and the features gate
def test_int8_export_records_its_deployment(int8_export):
    out, report = int8_export
    manifest = json.loads((out / "deploy.json").read_text())
    assert manifest == json.loads(json.dumps(report["deploy"]))
    assert manifest["asked"] == "int8" and manifest["target"]["provider"] == "CPUExecutionProvider"
    for kind in ("classifier", "features"):
        assert manifest[kind]["variant"] == "int8" and manifest[kind]["file"] == f"{kind}.int8.onnx"
        assert (out / manifest[kind]["file"]).is_file() and (out / f"{kind}.onnx").is_file()
        assert "--deploy int8" in manifest[kind]["reason"]
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["deploy"] == manifest


def test_features_int8_is_gated_with_figures_in_the_report(int8_export, textures):
    out, report = int8_export
    gate = report["feature_variants"]["int8"]
    assert gate["status"] == "accepted" and gate["file"] == "features.int8.onnx"
    assert "run's classifier applied to these features" in gate["gate"]
    assert gate["drop_points"] == pytest.approx(100 * (gate["fp32_val_accuracy"] - gate["val_accuracy"]), abs=1e-2)
    assert gate["drop_points"] <= gate["threshold_points"]
    # The run's classifier on fp32 features is classifier.onnx: the gate's reference is the export's own accuracy.
    assert gate["fp32_val_accuracy"] == pytest.approx(report["val_accuracy"]["onnx_fp32"])
    assert 0.5 < gate["cosine_min"] <= gate["cosine_mean"] <= 1.0
    assert gate["ops"]["quantized"].get("Conv", 0) >= 40 and gate["size_bytes"] < gate["fp32_size_bytes"] / 2
    # The deployed extractor is the int8 one, and its vectors are the ones the gate scored.
    images = sorted((textures / "val").rglob("*.png"))[:3]
    int8, fp32 = EdgeModel(out, kind="features"), EdgeModel(out, kind="features", variant="fp32")
    assert (int8.variant, int8.path.name, fp32.variant) == ("int8", "features.int8.onnx", "fp32")
    a = np.stack([r.features for r in int8.features(images)])
    b = np.stack([r.features for r in fp32.features(images)])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= gate["cosine_min"] - 0.05 and not np.array_equal(a, b)


# ---------------------------------------------------------------- the edge and zoo predict follow deploy.json
def test_predict_json_reports_the_deployed_variant(int8_export, textures, runner):
    out, _ = int8_export
    image = sorted((textures / "val").rglob("*.png"))[0]
    result = runner.invoke(app, ["predict", str(image), "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["variant"] == "int8" and rows[0]["error"] is None
    assert rows[0]["top_k"] == EdgeModel(out / "classifier.int8.onnx").predict([image], top_k=3)[0].top_k


class _Records(logging.Handler):
    """Every record of one logger, whatever the CLI configured for zoo's logger before."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_variant_that_cannot_load_falls_back_to_fp32_with_one_line(int8_export, textures, tmp_path, runner):
    out = _copy(int8_export[0], tmp_path)
    _corrupt(out / "classifier.int8.onnx")
    images = sorted((textures / "val").rglob("*.png"))[:3]
    handler, logger = _Records(), logging.getLogger("zoo.inference")
    logger.addHandler(handler)
    try:
        edge = EdgeModel(out)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in handler.records]
    assert len(lines) == 1 and "classifier.int8.onnx could not be loaded" in lines[0] and "fp32" in lines[0]
    assert edge.variant == "fp32" and edge.path.name == "classifier.onnx"
    want = EdgeModel(out, variant="fp32").predict(images)
    assert [r.top_k for r in edge.predict(images)] == [r.top_k for r in want]
    # The OOD threshold follows what ran: fp32's, calibrated on fp32's own features.
    thresholds = int8_export[1]["ood"]["thresholds"]
    assert {r.ood["threshold"] for r in edge.predict(images)} == {thresholds["fp32"]} != {thresholds["int8"]}
    assert [r.ood for r in edge.predict(images)] == [r.ood for r in want]
    result = runner.invoke(app, ["predict", *map(str, images), "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert {r["variant"] for r in json.loads(result.stdout)} == {"fp32"}
    assert "classifier.int8.onnx could not be loaded" in result.stderr  # the one line, on stderr
    with pytest.raises(EdgeError, match="not a usable ONNX model"):  # a file named explicitly is not replaced
        EdgeModel(out / "classifier.int8.onnx")
    (out / "features.int8.onnx").unlink()  # deployed but gone: fp32 too, not an error
    assert EdgeModel(out, kind="features").variant == "fp32"


# ---------------------------------------------------------------- --deploy
def test_deploy_fp32_alone_puts_fp32_back_without_exporting_again(int8_export, run_dir, tmp_path, runner):
    out = _copy(int8_export[0], tmp_path)
    before = (out / "classifier.int8.onnx").stat().st_mtime_ns
    store = tmp_path / "store"
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--deploy", "fp32",
                                 "--model-store", str(store), "--name", "tex"])
    assert result.exit_code == 0, result.output
    assert "deployed classifier: fp32 (classifier.onnx): --deploy fp32" in result.output
    manifest = json.loads((out / "deploy.json").read_text())
    assert (manifest["classifier"]["variant"], manifest["features"]["variant"]) == ("fp32", "fp32")
    assert (out / "classifier.int8.onnx").stat().st_mtime_ns == before, "the variants stay for a later --deploy"
    with zipfile.ZipFile(store / "tex.mar") as z:
        settings = json.loads(z.read("serving.json"))
    assert (settings["model_file"], settings["variant"], settings["fallback_file"]) == ("classifier.onnx", "fp32", None)
    assert EdgeModel(out).variant == "fp32"
    again = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--deploy", "int8", "--no-archive"])
    assert again.exit_code == 0 and json.loads((out / "deploy.json").read_text())["classifier"]["variant"] == "int8"


def test_deploy_needs_the_variant_it_names(run_dir, int8_export, tmp_path, runner):
    with pytest.raises(UsageError, match=r"--deploy fp16 needs the fp16 variant: add --quantize fp16"):
        export_run(run_dir, tmp_path / "new", quantize="int8", deploy="fp16")
    assert not (tmp_path / "new").exists(), "nothing is written before the refusal"
    for flags in (["--quantize", "int8", "--deploy", "fp16"], ["--deploy", "bf16"]):  # bad flags: exit 2
        bad = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "new"), "--no-archive", *flags])
        assert bad.exit_code == 2, bad.output
    assert not (tmp_path / "new").exists()
    out = _copy(int8_export[0], tmp_path)
    with pytest.raises(ZooError, match="holds no accepted fp16 variant"):
        export_run(run_dir, out, deploy="fp16")
    assert json.loads((out / "deploy.json").read_text())["classifier"]["variant"] == "int8"


def test_the_archive_names_the_deployed_file_and_carries_fp32(int8_export, tmp_path):
    from zoo.export.archive import write_archives

    mars = write_archives(int8_export[0], "tex", tmp_path / "store")
    for mar, kind in zip(mars, ("classifier", "features"), strict=True):
        with zipfile.ZipFile(mar) as z:
            settings = json.loads(z.read("serving.json"))
            names = {Path(n).name for n in z.namelist()}
        assert (settings["model_file"], settings["variant"]) == (f"{kind}.int8.onnx", "int8")
        assert settings["fallback_file"] == f"{kind}.onnx" and {f"{kind}.int8.onnx", f"{kind}.onnx"} <= names
        assert settings["ood_file"] == "ood.npz" and "ood.npz" in names  # both archives carry the OOD summary


# ---------------------------------------------------------------- auto: by the provider the graphs run on
def _info(status: str, speed: float) -> dict:
    return {"status": status, "speed_ratio": speed, "drop_points": 0.0, "threshold_points": 1.0,
            "latency_provider": "measured here"}


def test_auto_takes_the_fastest_variant_that_passed_on_the_target():
    cpu = {"provider": "CPUExecutionProvider", "cpu_int8_instructions": ["avx512_vnni"]}
    gpu = {"provider": "CUDAExecutionProvider", "cpu_int8_instructions": []}
    both = {"int8": _info("accepted", 3.1), "fp16": _info("accepted", 0.6)}
    chosen = deploy.choose("classifier", both, "auto", cpu)
    assert chosen["variant"] == "int8" and "with VNNI (avx512_vnni)" in chosen["reason"] and "3.10x" in chosen["reason"]
    on_gpu = deploy.choose("classifier", {"int8": _info("accepted", 0.7), "fp16": _info("accepted", 2.4)}, "auto", gpu)
    assert on_gpu["variant"] == "fp16" and on_gpu["file"] == "classifier.fp16.onnx"
    assert "CUDAExecutionProvider" in on_gpu["reason"]
    refused = deploy.choose("features", {"int8": _info("refused", 3.0)}, "auto", cpu)
    assert refused == {"variant": "fp32", "file": "features.onnx", "reason": refused["reason"]}
    assert "no variant passed its gate and beat fp32" in refused["reason"]
    slower = deploy.choose("classifier", {"fp16": _info("accepted", 0.5)}, "auto", cpu)
    assert slower["variant"] == "fp32" and "0.50x" in slower["reason"]
    asked = deploy.choose("classifier", {"int8": _info("refused", 3.0)}, "int8", cpu)
    assert asked["variant"] == "fp32" and "refused by its accuracy gate" in asked["reason"]


def test_int8_instructions_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert deploy.int8_instructions(cpuinfo) == ["avx512_vnni"]
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert deploy.int8_instructions(cpuinfo) == ["asimddp"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert deploy.int8_instructions(cpuinfo) == []
    assert deploy.int8_instructions(tmp_path / "absent") == []


# ---------------------------------------------------------------- a real TorchServe
@pytest.mark.slow
def test_served_answers_name_the_variant_and_a_broken_int8_falls_back(int8_export, run_dir, textures, tmp_path_factory,
                                                                      monkeypatch, runner):
    """int8 as exported, fp32 put back by --deploy, and int8 damaged after export: three archives, one server."""
    from zoo import serve
    from zoo.export.archive import write_archives

    out = int8_export[0]
    root = tmp_path_factory.mktemp("deploy-serve")
    store = root / "store"
    write_archives(out, "q8", store)
    fp32 = Path(shutil.copytree(out, root / "fp32"))
    export_run(run_dir, fp32, deploy="fp32")  # --deploy alone: chooses again in the existing export
    write_archives(fp32, "p32", store)
    broken = Path(shutil.copytree(out, root / "broken"))
    _corrupt(broken / "classifier.int8.onnx")
    write_archives(broken, "broken", store)
    port = serve.free_port_block(24000, step=97)
    cfg = serve.ServeConfig(model_store=store, models=("q8", "p32", "broken"), port=port, workers=1, threads=1,
                            state_dir=root / "home" / str(port))
    image = sorted((textures / "val").rglob("*.png"))[0]
    info = None
    try:
        info = serve.start(cfg, timeout_s=900)
        monkeypatch.setenv("ZOO_SERVE_HOME", str(root / "home"))  # `zoo predict --server` finds the key there
        answers = {}
        for model in ("q8", "p32", "broken"):
            result = runner.invoke(app, ["predict", str(image), "--server", f"{info.inference_url}/predictions/{model}",
                                         "--json"])
            assert result.exit_code == 0, result.output
            (answers[model],) = json.loads(result.stdout)
        assert {m: a["variant"] for m, a in answers.items()} == {"q8": "int8", "p32": "fp32", "broken": "fp32"}
        thresholds = int8_export[1]["ood"]["thresholds"]  # each answer's OOD threshold is its variant's own
        assert {m: a["ood"]["threshold"] for m, a in answers.items()} == {
            "q8": thresholds["int8"], "p32": thresholds["fp32"], "broken": thresholds["fp32"]}
        for model, variant in (("q8", "int8"), ("p32", "fp32"), ("broken", "fp32")):
            local = EdgeModel(out, variant=variant).predict([image], top_k=3)[0].top_k
            assert list(answers[model]["top_k"]) == list(local), model
            assert max(abs(answers[model]["top_k"][k] - local[k]) for k in local) <= 1e-4, model
            local_ood = EdgeModel(out, variant=variant).predict([image])[0].ood
            assert abs(answers[model]["ood"]["score"] - local_ood["score"]) <= 1e-5, model
        log = (Path(info.log_dir) / "model_log.log").read_text()
        fell_back = [line for line in log.splitlines() if "could not be loaded" in line]
        assert len(fell_back) == 1 and "-broken_" in fell_back[0] and "running classifier.onnx (fp32)" in fell_back[0]
        ready = [line for line in log.splitlines() if "handler ready" in line and "-q8_" in line]
        assert ready and "int8 variant" in ready[0]
    finally:
        stopped = serve.stop(cfg.folder)
        if info is not None:
            assert stopped is not None and serve.live_group_members(info.pid) == []
