"""--device and --precision: resolved once, checked against this machine, one sentence when it lacks them."""
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zoo import hardware
from zoo.backbones.model import ZooModel
from zoo.cli import app
from zoo.errors import ZooError
from zoo.hardware import CPU_FP32, Compute, cpu_has_native_bf16, resolve_device, resolve_precision

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without CUDA")


def test_a_cpu_training_pass_runs_depthwise_convolutions_in_fp32_and_every_other_layer_as_before():
    from zoo.backbones import create_model

    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False).train()
    depthwise = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1}
    assert len(depthwise) == 16
    seen: dict[str, torch.dtype] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out.dtype))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, bf16 = torch.randn(2, 3, 64, 64), Compute(torch.device("cpu"), "bf16")
    with bf16.training_pass(model), bf16.autocast():
        model(x).sum().backward()  # the backward runs through the casts
    assert {n for n, t in seen.items() if t == torch.float32} == depthwise
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    with bf16.autocast():  # after the pass, and in forward-only passes: the convolutions as autocast runs them
        model(x)
    assert set(seen.values()) == {torch.bfloat16}
    assert all("forward" not in vars(m) for m in model.modules())  # nothing stays on the instances
    assert state.keys() == model.state_dict().keys()
    with CPU_FP32.training_pass(model):  # fp32: nothing to do
        assert all("forward" not in vars(m) for m in model.modules())


@no_cuda
def test_auto_takes_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr("zoo.hardware._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert Compute.resolve("auto", "fp32") == CPU_FP32
    assert Compute.resolve("auto", "auto").device == torch.device("cpu")


def test_precision_auto_on_the_cpu_is_bf16_only_with_bf16_instructions(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert Compute(cpu, "bf16").for_evaluation.precision == "fp32"  # reported figures are fp32's


def test_precision_explicit_choices_are_kept_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("FP32", cpu) == "fp32"
    with pytest.raises(ZooError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ZooError, match="Unknown precision 'fp8': choose one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", cpu)


def test_precision_auto_on_a_gpu_prefers_bf16(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", gpu) == "fp16"  # with a gradient scaler
    with pytest.raises(ZooError, match="bf16 needs a GPU with bfloat16 support"):
        resolve_precision("bf16", gpu)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_an_explicit_cuda_device_without_cuda_is_one_sentence(name):
    with pytest.raises(ZooError) as e:
        resolve_device(name)
    message = str(e.value)
    assert message.count(". ") == 0 and "needs a CUDA GPU" in message and "--device auto or cpu" in message


def test_unknown_devices_are_refused():
    for name in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ZooError, match="Unknown device"):
            resolve_device(name)


def test_fp32_compute_changes_no_value():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(CPU_FP32.batch(x), x)  # channels-last on the CPU: another layout, the same numbers
    assert CPU_FP32.channels_last and CPU_FP32.batch(x).is_contiguous(memory_format=torch.channels_last)
    assert not CPU_FP32.pin_memory
    assert not CPU_FP32.grad_scaler().is_enabled()
    with CPU_FP32.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_autocast_on_the_cpu_runs_matmuls_in_bf16():
    with Compute(torch.device("cpu"), "bf16").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_under_autocast_the_stages_run_in_bf16_and_pooling_and_the_classifier_in_fp32():
    model = ZooModel(OrderedDict(stage1=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())), feature_dim=4, num_classes=2)
    seen: dict[str, torch.dtype] = {}
    for name, module in (("stage", model.stages["stage1"]), ("logits", model.classifier)):
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out.dtype))
    x = torch.randn(2, 3, 16, 16)
    with Compute(torch.device("cpu"), "bf16").autocast():
        logits, features = model(x), model.forward_features(x)
    assert seen == {"stage": torch.bfloat16, "logits": torch.float32}
    assert logits.dtype == features.dtype == torch.float32
    # Outside autocast the graph export traces is the plain one: no cast was added to it
    assert "aten::to" not in str(torch.jit.trace(model.eval(), x).inlined_graph)


@no_cuda
def test_finetune_with_cuda_on_a_cpu_machine_says_so_and_writes_nothing(tiny_textures, tmp_path, runner):
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(tiny_textures), "--device", "cuda", "--out", str(out)])
    assert result.exit_code == 2, result.output  # a usage error: the flag asks for what this machine lacks
    assert "needs a CUDA GPU" in result.output and "Traceback" not in result.output
    assert not out.exists()


@no_cuda
def test_advise_with_cuda_on_a_cpu_machine_says_so(tiny_textures, runner):
    result = runner.invoke(app, ["advise", str(tiny_textures), "--device", "cuda:0"])
    assert result.exit_code == 2 and "needs a CUDA GPU" in result.output and "Traceback" not in result.output


def test_a_cpu_run_records_its_device_and_precision(tiny_textures, tmp_path):
    from zoo.run_dir import read_json
    from zoo.training.finetune import finetune

    out = tmp_path / "head"
    finetune(tiny_textures, strategy="head", epochs=2, out=out, cache_dir=tmp_path / "cache", device="cpu")
    compute = read_json(out / "config.json")["compute"]
    assert compute["device"] == "cpu" and compute["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert compute["channels_last"] == "true" and compute["depthwise_training"] == "fp32"
    assert compute["cpu_allocator"] == ("heap" if sys.platform.startswith("linux") else "system")


def test_gpu_layout_follows_the_measured_costs_of_new_shapes():
    from zoo.hardware import gpu_layout

    # Validation at the images' own aspect ratios: one or two batches per shape, cuDNN's plans never pay.
    assert gpu_layout([(224, 224 + 8 * i) for i in range(40)]) == "no_cudnn"
    # Many batches of a few shapes: cuDNN pays; channels_last only once its ~1 s plans are spread thin.
    assert gpu_layout([(224, 224)] * 60 + [(224, 300)] * 60) == "contiguous"
    assert gpu_layout([(224, 224)] * 2000) == "channels_last"


def test_a_shaped_pass_off_the_gpu_changes_nothing():
    from zoo.backbones import create_model
    from zoo.hardware import memory_format

    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False)
    assert memory_format(model) == torch.contiguous_format
    cudnn = torch.backends.cudnn.enabled
    with CPU_FP32.shaped_pass(model, [(224, 224 + i) for i in range(50)]) as shaped:
        assert shaped is CPU_FP32 and torch.backends.cudnn.enabled == cudnn
        assert memory_format(model) == torch.contiguous_format
    model.to(memory_format=torch.channels_last)
    assert memory_format(model) == torch.channels_last
