"""--device on what runs a finished model: `zoo predict` (ONNX Runtime) and `zoo evaluate` (a run on PyTorch,
an export on ONNX Runtime). On this CPU-only machine: cpu and auto run, an explicit cuda is one sentence."""
from __future__ import annotations

import json

import pytest
import torch

from zoo import ort_device
from zoo.cli import app
from zoo.errors import UsageError
from zoo.inference import CPU, CUDA

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: cuda runs (tests/test_gpu.py)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from serve_helpers import exported as shared

    return shared(tmp_path_factory)


def test_placement_of_each_device_name(monkeypatch):
    assert ort_device.ort_placement("auto") == (None, None)
    assert ort_device.ort_placement(" CPU ") == ([CPU], None)
    monkeypatch.setattr(ort_device, "available_providers", lambda: [CUDA, CPU])
    assert ort_device.ort_placement("cuda") == ([CUDA], 0)
    assert ort_device.ort_placement("cuda:1") == ([CUDA], 1)
    for name in ("tpu", "mps", "cuda:x", "gpu"):
        with pytest.raises(UsageError, match="choose auto, cpu, cuda or cuda:N"):
            ort_device.ort_placement(name)
    monkeypatch.setattr(ort_device, "available_providers", lambda: [CPU])  # a CPU-only onnxruntime
    with pytest.raises(UsageError, match="needs onnxruntime-gpu"):
        ort_device.ort_placement("cuda:0")


def _one_sentence(result, code: int, words: str) -> None:
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_predict_on_the_cpu_gives_the_answers_of_auto(runner, exported):
    image = str(sorted((exported.data_dir / "val").rglob("*.png"))[0])
    answers = {}
    for device in ("auto", "cpu"):
        result = runner.invoke(app, ["predict", image, "--model", str(exported.export_dir), "--json",
                                     "--device", device])
        assert result.exit_code == 0, result.output
        answers[device] = json.loads(result.stdout)
    assert answers["cpu"] == answers["auto"]


@NO_GPU
def test_predict_and_evaluate_refuse_a_gpu_they_cannot_use(runner, exported, tmp_path):
    image = str(sorted((exported.data_dir / "val").rglob("*.png"))[0])
    for device in ("cuda", "cuda:1"):
        result = runner.invoke(app, ["predict", image, "--model", str(exported.export_dir), "--device", device])
        _one_sentence(result, 2, f"--device {device}")
    _one_sentence(runner.invoke(app, ["predict", image, "--model", str(exported.export_dir), "--device", "tpu"]), 2,
                  "Unknown device 'tpu'")
    _one_sentence(runner.invoke(app, ["predict", image, "--server", "http://127.0.0.1:9/predictions/x", "--device",
                                      "cpu"]), 2, "drop --device")
    for target, words in ((exported.export_dir, "--device cuda"), (exported.run_dir, "needs a CUDA GPU")):
        result = runner.invoke(app, ["evaluate", str(target), str(exported.data_dir), "--split", "val", "--device",
                                     "cuda", "--out", str(tmp_path / "never")])
        _one_sentence(result, 2, words)
    assert not (tmp_path / "never").exists()


def test_evaluate_runs_a_run_and_its_export_on_the_cpu_alike(runner, exported, tmp_path):
    reports = {}
    for name, target in (("run", exported.run_dir), ("export", exported.export_dir)):
        result = runner.invoke(app, ["evaluate", str(target), str(exported.data_dir), "--split", "val", "--device",
                                     "cpu", "--out", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
    assert reports["run"]["kind"] == "run directory (PyTorch fp32, cpu)"
    assert reports["export"]["kind"].startswith(f"ONNX Runtime {CPU}")
    assert reports["run"]["metrics"]["accuracy"] == reports["export"]["metrics"]["accuracy"]


def test_a_run_on_a_gpu_takes_the_layout_for_its_images_shapes(exported):
    # Compute.shaped_pass only reads the device's type, so its choice is checked here without a GPU.
    from zoo.evaluate.targets import RunTarget
    from zoo.hardware import memory_format

    target = RunTarget(exported.run_dir, "cpu")
    paths = sorted((exported.data_dir / "val").rglob("*.png"))
    with target.pass_over(paths):
        assert target.compute is None  # the CPU: nothing changes
    target.device = torch.device("cuda")
    cudnn = torch.backends.cudnn.enabled
    with target.pass_over([*paths, exported.data_dir / "missing.png"]):  # an unreadable image is left out
        assert target.compute is not None and target.compute.layout == "no_cudnn"  # 12 images, many sizes
        assert torch.backends.cudnn.enabled is False
    assert target.compute is None and torch.backends.cudnn.enabled == cudnn
    assert memory_format(target.run.model) == torch.contiguous_format
