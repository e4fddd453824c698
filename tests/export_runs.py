"""Run directories for the export tests, written to the run-directory contract (zoo/run_dir.py).

A head is fitted on bottleneck features of the training images (logistic regression, full batch),
and metrics.json gets the PyTorch val accuracy measured with zoo.preprocess, as `zoo finetune` does.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from zoo.atomic import atomic_write_json
from zoo.backbones import create_model, get_spec
from zoo.data.folder import load_image_folder
from zoo.preprocess import preprocess
from zoo.run_dir import CONFIG, LABELS, WEIGHTS, mark_complete, save_weights


@contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one thread: several times faster on a shared 2-core machine, where its second thread
    waits on a core that ONNX Runtime's threads (or another process) hold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _features(model, samples, cfg) -> torch.Tensor:
    return torch.cat([model.forward_features(torch.from_numpy(preprocess(s.path, cfg))[None]) for s in samples])


def make_run(out: Path, data_dir: Path, model_name: str = "efficientnet_lite0", layer: str | None = None,
             pretrained: bool = True, train: bool = True, steps: int = 100, record_data: bool = True) -> Path:
    data = load_image_folder(data_dir)
    k = len(data.classes)
    with one_thread():
        return _make_run(out, data, data_dir, model_name, layer, pretrained, train, steps, record_data, k)


def _make_run(out, data, data_dir, model_name, layer, pretrained, train, steps, record_data, k) -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=k, pretrained=pretrained)
    if layer:
        model = model.truncated(layer, k)
    model.eval()
    cfg = get_spec(model_name).preprocess_config()
    metrics = {}
    if train:
        x = _features(model, data.train, cfg)
        y = torch.tensor([s.label for s in data.train])
        head = model.classifier
        opt = torch.optim.LBFGS(head.parameters(), max_iter=steps)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(x), y) + 1e-3 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        xv = _features(model, data.val, cfg)
        yv = torch.tensor([s.label for s in data.val])
        metrics = {"accuracy": float((model.forward_head(xv).argmax(1) == yv).float().mean()), "val_images": len(yv)}
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": model_name, "num_classes": k, "layer": layer, "preprocess": cfg.to_json(),
              "strategy": "svm" if layer else "head", "seed": 0, "val_fraction": 0.2}
    if record_data:  # without it, export checks parity on photos that ship with scikit-image
        config["data"] = {"dir": str(Path(data_dir).resolve())}
    atomic_write_json(out / CONFIG, config)
    atomic_write_json(out / LABELS, data.classes)
    save_weights(model, out / WEIGHTS)
    mark_complete(out)
    if metrics:
        atomic_write_json(out / "metrics.json", metrics)
    return out


@torch.no_grad()
def precision_floor(run_dir: Path) -> float:
    """How far PyTorch's own float32 logits sit from float64 on the parity inputs (max |Δ|).

    A random network can amplify rounding so much that float32 PyTorch misses its own float64 result
    by more than 1e-4; no exported graph can be held closer to PyTorch than that.
    """
    from zoo.export.parity import DEFAULT_SIZES, _batch_at
    from zoo.export.run_images import parity_images
    from zoo.run_dir import load_run

    run = load_run(run_dir)
    images, _ = parity_images(None, run.preprocess)
    model64 = load_run(run_dir).model.double()
    worst = 0.0
    for size in DEFAULT_SIZES:
        x = torch.from_numpy(_batch_at(images, size, run.preprocess, 5))
        worst = max(worst, float((run.model(x).double() - model64(x.double())).abs().max()))
    return worst
