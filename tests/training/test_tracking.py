"""TensorBoard event files read back with tensorboard's own reader; MLflow runs read back with MLflow's client."""
import csv
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from zoo.training.finetune import finetune

OPTIONS = dict(strategy="head", epochs=3, batch_size=8, seed=1)


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_tensorboard_files_hold_the_scalars_learning_rates_confusion_matrix_and_hparams(tiny_textures, tmp_path):
    out = tmp_path / "run"
    metrics = finetune(tiny_textures, out=out, **OPTIONS)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "macro_f1/val", "learning_rate/classifier",
            "learning_rate/backbone"} <= set(tags["scalars"])
    history = _history(out)
    val = events.Scalars("accuracy/val")
    assert [e.step for e in val] == [1, 2, 3]
    assert [e.value for e in val] == pytest.approx([float(r["val_accuracy"]) for r in history])
    assert [e.value for e in events.Scalars("learning_rate/classifier")] == pytest.approx(
        [float(r["lr"]) for r in history])
    image = events.Images("confusion_matrix/val")[0]
    assert image.width > 100 and image.encoded_image_string.startswith(b"\x89PNG")

    hparams = EventAccumulator(str(out / "tensorboard" / "hparams"), size_guidance={"scalars": 0})
    hparams.Reload()
    content = hparams.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    assert start.hparams["strategy"].string_value == "head" and start.hparams["seed"].number_value == 1
    assert hparams.Scalars("final/val_accuracy")[0].value == pytest.approx(metrics["accuracy"])


def test_log_none_writes_no_event_files(tiny_textures, tmp_path):
    finetune(tiny_textures, out=tmp_path / "run", log="none", **OPTIONS)
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "model.safetensors").is_file()


def test_log_mlflow_records_params_metrics_and_files(tiny_textures, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed here (pip install mlflow)")
    # MLflow's own file store: it needs no database package (mlflow-skinny has none).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    metrics = finetune(tiny_textures, out=tmp_path / "run", log="mlflow", **OPTIONS)
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["strategy"] == "head" and run.data.metrics["val_accuracy"] == pytest.approx(
        metrics["accuracy"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy_val")] == [1, 2, 3]
    assert {"metrics.json", "confusion.png", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_log_mlflow_without_mlflow_says_so_and_writes_nothing(tiny_textures, tmp_path):
    blocker = tmp_path / "no-mlflow"
    (blocker / "mlflow").mkdir(parents=True)
    (blocker / "mlflow" / "__init__.py").write_text('raise ImportError("mlflow is not installed here")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])}
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "finetune", str(tiny_textures), "--out", str(out),
                             "--log", "mlflow"], capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr
    assert "--log mlflow needs MLflow, which is not installed: run `pip install mlflow`" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
