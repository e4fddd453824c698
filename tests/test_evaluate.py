"""`zoo evaluate` on one test split through every kind of target: the run (PyTorch), its export in fp32
and int8 (ONNX Runtime), and the same export served by a real TorchServe; and its bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from zoo import serve
from zoo.cli import app
from zoo.data.samples import write_sample
from zoo.training.finetune import finetune

pytestmark = pytest.mark.slow
INT8_GATE = 1.0  # points: export's --max-accuracy-drop default, the gate int8 passed


def _with_test_folder(root: Path) -> Path:
    """The textures sample, with a third of each class's training images moved to DIR/test/<class>."""
    write_sample("textures", root, seed=0, limit=60)
    for class_dir in sorted((root / "train").iterdir()):
        (root / "test" / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[::3]:
            shutil.move(path, root / "test" / class_dir.name / path.name)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = _with_test_folder(root / "data")
    metrics = finetune(data, strategy="head", epochs=4, batch_size=8, out=root / "run", cache_dir=root / "cache")
    exported = CliRunner().invoke(app, ["export", str(root / "run"), "--out", str(root / "export"), "--quantize",
                                        "int8", "--max-accuracy-drop", str(INT8_GATE), "--model-store",
                                        str(root / "model_store"), "--name", "textures", "--json"])
    assert exported.exit_code == 0, exported.output
    report = json.loads(exported.stdout)  # --json: stdout is the report alone
    assert report["variants"]["int8"]["status"] == "accepted" and len(report["archives"]) == 2
    return root, data, metrics


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    root, _, _ = trained
    home = tmp_path_factory.mktemp("home")
    port = serve.free_port_block(23000, step=131)
    try:
        started = CliRunner().invoke(app, ["serve", "start", "--model-store", str(root / "model_store"), "--port",
                                           str(port), "--workers", "1", "--timeout", "900", "--json"],
                                     env={"ZOO_SERVE_HOME": str(home)})
        assert started.exit_code == 0, started.output
        yield serve.ServerInfo(**json.loads(started.stdout))
    finally:
        serve.stop(home / str(port))


def _evaluate(runner, args, env=None) -> dict:
    result = runner.invoke(app, ["evaluate", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_run_export_int8_and_server_give_the_same_test_accuracy(runner, trained, served, tmp_path):
    root, data, metrics = trained
    n_test = sum(1 for _ in (data / "test").rglob("*.png"))
    run = _evaluate(runner, [str(root / "run"), str(data), "--out", str(tmp_path / "run")])
    fp32 = _evaluate(runner, [str(root / "export" / "classifier.onnx"), str(data), "--out", str(tmp_path / "fp32")])
    int8 = _evaluate(runner, [str(root / "export" / "classifier.int8.onnx"), str(data), "--out",
                              str(tmp_path / "int8")])
    # The export folder runs what deploy.json names (int8 where it passed and is faster here), and says so.
    deployed = _evaluate(runner, [str(root / "export"), str(data), "--out", str(tmp_path / "deployed")])
    variant = json.loads((root / "export" / "deploy.json").read_text())["classifier"]["variant"]
    assert deployed["variant"] == variant and variant in deployed["kind"], deployed["kind"]
    assert (fp32["variant"], int8["variant"], run["variant"]) == ("fp32", "int8", "fp32")
    same = dict(fp32=fp32, int8=int8)[variant]
    assert deployed["metrics"]["accuracy"] == same["metrics"]["accuracy"]
    url = f"{served.inference_url}/predictions/textures"
    token = serve.read_key(served.key_file, "inference")
    # No key file where the client looks (another ZOO_SERVE_HOME): the token comes from ZOO_TOKEN alone.
    http = _evaluate(runner, [url, str(data), "--out", str(tmp_path / "http")],
                     env={"ZOO_TOKEN": token, "ZOO_SERVE_HOME": str(tmp_path / "elsewhere")})
    for result in (run, fp32, int8, http):
        assert result["images"] == n_test and result["split_settings"]["test_split"] == "folder"
    top1 = {name: r["metrics"]["accuracy"] for name, r in dict(run=run, fp32=fp32, int8=int8, http=http).items()}
    assert top1["run"] == top1["fp32"] == pytest.approx(metrics["test"]["accuracy"]), top1
    assert top1["http"] == top1[variant], top1  # the archives serve the deployed variant too
    assert abs(top1["int8"] - top1["fp32"]) * 100 <= INT8_GATE, top1
    assert run["metrics"]["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert http["metrics"]["loss"] == pytest.approx(same["metrics"]["loss"], abs=1e-3)
    for name in ("report.md", "confusion.png", "reliability.png", "evaluation.json"):
        assert (tmp_path / "http" / name).stat().st_size > 0
    assert "expected calibration error" in (tmp_path / "int8" / "report.md").read_text()
    assert run["latency_ms"]["p50"] > 0 and http["kind"].startswith("served")


def test_ood_auroc_against_an_outside_folder(runner, trained, served, tmp_path):
    """The val split against digits: the export (ONNX Runtime) and the server score the same images alike."""
    root, data, _ = trained
    digits = tmp_path / "digits"
    write_sample("digits", digits, seed=0, limit=60)
    args = [str(data), "--split", "val", "--ood-folder", str(digits)]
    export = _evaluate(runner, [str(root / "export"), *args, "--out", str(tmp_path / "export")])
    o = export["ood"]
    assert o["auroc"] >= 0.95 and o["out_images"] == sum(1 for _ in digits.rglob("*.png"))
    assert o["in_images"] == export["images"] and 0 <= o["false_alarm_rate"] <= 0.25 and o["detection_rate"] >= 0.9
    assert "AUROC" in (tmp_path / "export" / "report.md").read_text()
    assert json.loads((tmp_path / "export" / "evaluation.json").read_text())["ood"] == o
    token = serve.read_key(served.key_file, "inference")
    http = _evaluate(runner, [f"{served.inference_url}/predictions/textures", *args, "--out", str(tmp_path / "http")],
                     env={"ZOO_TOKEN": token})
    assert http["ood"]["auroc"] == pytest.approx(o["auroc"], abs=1e-6)
    assert http["ood"]["threshold"] == pytest.approx(o["threshold"], abs=1e-9)
    refused = [([str(root / "run"), *args], "gives no OOD score"),  # the summary lives in the export
               ([str(root / "export"), str(data), "--split", "val", "--ood-folder", str(tmp_path / "nothing")],
                "is not a folder")]
    for call, message in refused:
        result = runner.invoke(app, ["evaluate", *call, "--out", str(tmp_path / "never")])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "never").exists()


def test_the_default_report_folder_is_beside_the_target_and_never_silently_replaced(runner, trained):
    root, data, _ = trained
    first = runner.invoke(app, ["evaluate", str(root / "export"), str(data), "--split", "val"])
    assert first.exit_code == 0, first.output
    assert (root / "export" / "evaluate-val" / "report.md").is_file()
    again = runner.invoke(app, ["evaluate", str(root / "export"), str(data), "--split", "val"])
    assert again.exit_code == 2 and "pass --force" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, ["evaluate", str(root / "export"), str(data), "--split", "val", "--force"]).exit_code == 0


def test_bad_targets_and_data_end_in_one_sentence(runner, trained, tmp_path):
    root, data, _ = trained
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a model")
    other = tmp_path / "other"
    for name in ("cats", "dogs", "owls"):
        (other / name).mkdir(parents=True)
        for file in ("x.png", "y.png"):
            Image.new("RGB", (40, 30), (9, 90, 200)).save(other / name / file)
    cases = [  # exit status 1: the work failed on what it was given; 2: a malformed argument (a usage error)
        ([str(tmp_path / "notes"), str(data)], "is not a run directory, an export folder", 1),
        ([str(root / "run"), str(other), "--split", "val"], "differ from the model's labels", 1),
        ([str(root / "export" / "classifier.int8.onnx"), str(other), "--split", "all"], "differ from the model's", 1),
        ([str(root / "run"), str(other)], "has no test split", 1),
        (["http://127.0.0.1:9/nothing", str(data)], "is not a prediction endpoint", 2),
    ]
    for args, message, code in cases:
        result = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "never")])
        assert result.exit_code == code, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "never").exists()
