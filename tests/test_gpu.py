"""The GPU check: run with `make gpu-check` on a machine with a CUDA GPU; every test skips without one.

- `head` and `full` train on the GPU with mixed precision (bf16 autocast, or fp16 with loss scaling)
  on the textures sample, and reach the accuracy they reach on the CPU;
- the exported classifier agrees with PyTorch on ONNX Runtime's CUDA execution provider;
- a served archive answers from a TorchServe worker that runs ONNX Runtime's CUDA provider.
The last two need onnxruntime-gpu (and TorchServe with Java for the third); they skip, saying why,
where those are missing.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]
CUDA_EP = "CUDAExecutionProvider"


def _needs_ort_cuda() -> None:
    import onnxruntime as ort

    if CUDA_EP not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no {CUDA_EP} (install onnxruntime-gpu): {ort.get_available_providers()}")


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    from zoo.data.samples import write_sample
    from zoo.training.finetune import finetune

    root = tmp_path_factory.mktemp("gpu")
    write_sample("textures", root / "textures", seed=0)
    runs = {}
    for strategy, epochs in (("head", None), ("full", 3)):
        out = root / strategy
        metrics = finetune(root / "textures", strategy=strategy, epochs=epochs, out=out, cache_dir=root / "cache",
                           device="cuda", precision="auto", workers=4)
        runs[strategy] = (out, metrics)
    return runs


@pytest.mark.parametrize("strategy", ["head", "full"])
def test_training_runs_on_the_gpu_with_mixed_precision(gpu_runs, strategy):
    out, metrics = gpu_runs[strategy]
    compute = json.loads((out / "config.json").read_text())["compute"]
    assert compute["device"].startswith("cuda") and compute["precision"] in ("bf16", "fp16")
    assert compute["channels_last"] == "true"
    print(f"{strategy} on {compute['name']} in {compute['precision']}: val accuracy {metrics['accuracy']:.3f}")
    assert metrics["accuracy"] >= 0.9  # the textures are easy: 1.0 on the CPU


def test_export_agrees_with_torch_on_the_cuda_provider(gpu_runs, tmp_path):
    _needs_ort_cuda()
    from zoo.export.onnx_export import export_run
    from zoo.inference import open_session
    from zoo.run_dir import load_run

    run_dir, _ = gpu_runs["head"]
    export_run(run_dir, tmp_path / "export")
    session = open_session(tmp_path / "export" / "classifier.onnx", [CUDA_EP])
    assert session.get_providers()[0] == CUDA_EP
    model = load_run(run_dir).model.eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = session.run(["logits"], {"image": x.numpy()})
    print(f"CUDA provider vs torch: max |d logits| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 1e-2 and (got.argmax(1) == want.argmax(1)).all()


def test_served_archive_uses_the_cuda_provider(gpu_runs, tmp_path):
    _needs_ort_cuda()
    if shutil.which("torchserve") is None or shutil.which("java") is None:
        pytest.skip("TorchServe or Java is not installed here")
    import requests

    from zoo import serve
    from zoo.edge import EdgeModel
    from zoo.export.archive import write_archives
    from zoo.export.onnx_export import export_run

    run_dir, _ = gpu_runs["head"]
    export_run(run_dir, tmp_path / "export")
    write_archives(tmp_path / "export", "gpu", tmp_path / "store")
    cfg = serve.ServeConfig(model_store=tmp_path / "store", models=("gpu",), port=serve.free_port_block(23000, 97),
                            workers=1, state_dir=tmp_path / "home")
    image = (next((run_dir.parent / "textures" / "val").rglob("*.png"))).read_bytes()
    try:
        info = serve.start(cfg, timeout_s=600)
        answer = requests.post(f"{info.inference_url}/predictions/gpu", data=image, timeout=60,
                               headers={"Authorization": f"Bearer {serve.read_key(info.key_file, 'inference')}",
                                        "Content-Type": "application/octet-stream"}).json()
        log = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "home").rglob("*.log"))
    finally:
        serve.stop(cfg.folder)
    local = EdgeModel(tmp_path / "export", kind="classifier").predict([image], top_k=1)[0].top_k
    assert next(iter(answer)) == next(iter(local))
    assert CUDA_EP in log, "the worker did not report ONNX Runtime's CUDA provider"


def test_evaluate_on_the_gpu_scores_as_on_the_cpu(gpu_runs, tmp_path):
    from zoo.evaluate.evaluate import evaluate
    from zoo.export.onnx_export import export_run

    run_dir, _ = gpu_runs["head"]
    data = run_dir.parent / "textures"
    targets = [("run", str(run_dir))]
    import onnxruntime as ort

    if CUDA_EP in ort.get_available_providers():
        export_run(run_dir, tmp_path / "export")
        targets.append(("export", str(tmp_path / "export")))
    for name, target in targets:
        cpu, gpu = (evaluate(target, data, "val", write=False, device=device) for device in ("cpu", "cuda"))
        print(f"evaluate {name}: {gpu['kind']} top-1 {gpu['metrics']['accuracy']:.4f}, "
              f"{cpu['kind']} {cpu['metrics']['accuracy']:.4f}")
        assert "cuda" in gpu["kind"].lower()
        assert abs(gpu["metrics"]["accuracy"] - cpu["metrics"]["accuracy"]) <= 1 / cpu["images"] + 1e-9
