"""Proof that the exported graphs compute what the PyTorch model computes, and what the run measured.

Parity runs real images through both at several sizes (square, non-square, odd) and batch sizes;
val accuracy runs ONNX Runtime and zoo.preprocess alone (zoo.edge), the way a device will.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from zoo.inference import CPU, open_session
from zoo.preprocess import PreprocessConfig, normalize

if TYPE_CHECKING:
    from zoo.backbones import ZooModel

# (height, width): square at the usual size, landscape non-square, and odd on both sides — odd sizes
# are where efficientnet_lite's TF-SAME padding differs from symmetric padding.
DEFAULT_SIZES = ((224, 224), (180, 320), (97, 301))
BATCH_SIZES = (1, 5)


def _batch_at(images: Sequence[Image.Image], size: tuple[int, int], cfg: PreprocessConfig, n: int) -> np.ndarray:
    h, w = size
    resample = Image.Resampling[cfg.interpolation.upper()]
    return np.stack([normalize(img.resize((w, h), resample=resample), cfg) for img in images[:n]])


def check_parity(model: ZooModel, classifier_path: Path, features_path: Path, images: Sequence[Image.Image],
                 cfg: PreprocessConfig, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                 batch_sizes: Sequence[int] = BATCH_SIZES, atol: float = 1e-4) -> dict:
    """Max |Δ| of logits, probabilities and features and top-1 agreement, per case and overall.

    Logits must agree within `atol`; features within `atol` relative to their largest value (a
    bottleneck vector can be large while its relative error stays tiny); top-1 must agree everywhere.
    """
    classifier, features = open_session(classifier_path, [CPU]), open_session(features_path, [CPU])
    # The classifier's features output (what the OOD score reads) is checked too, where the graph has one.
    names = ["logits", "probabilities"] + [o.name for o in classifier.get_outputs() if o.name == "features"]
    cases = []
    agree = total = 0
    for size in sizes:
        for n in batch_sizes:
            x = _batch_at(images, size, cfg, n)
            with torch.no_grad():
                t_features = model.forward_features(torch.from_numpy(x))
                t_logits = model.forward_head(t_features)
                t_probs = torch.softmax(t_logits, dim=1)
            o_logits, o_probs, *o_pooled = classifier.run(names, {"image": x})
            (o_features,) = features.run(["features"], {"image": x})
            features_gap = max(float(np.abs(f - t_features.numpy()).max()) for f in [o_features, *o_pooled])
            t_top1, o_top1 = t_logits.argmax(1).numpy(), o_logits.argmax(1)
            agree += int((t_top1 == o_top1).sum())
            total += n
            scale = float(t_features.abs().max())
            cases.append({
                "height": size[0], "width": size[1], "batch": n,
                "max_abs_logits": float(np.abs(o_logits - t_logits.numpy()).max()),
                "max_abs_probabilities": float(np.abs(o_probs - t_probs.numpy()).max()),
                "max_abs_features": features_gap,  # features.onnx and the classifier's own features output
                "features_scale": scale,  # max |features|: the size the features error is judged against
                "top1_agreement": float((t_top1 == o_top1).mean()),
            })
    worst = {k: max(c[k] for c in cases) for k in ("max_abs_logits", "max_abs_probabilities", "max_abs_features")}
    features_ok = all(c["max_abs_features"] <= atol * max(1.0, c["features_scale"]) for c in cases)
    top1 = agree / total
    return {
        "ok": worst["max_abs_logits"] <= atol and features_ok and top1 == 1.0,
        "tolerance": {"max_abs_logits": atol, "max_abs_features": f"{atol} x max(1, max |features|)",
                      "top1_agreement": 1.0},
        "provider": CPU,
        **worst,
        "top1_agreement": top1,
        "sizes": [list(s) for s in sizes],
        "batch_sizes": list(batch_sizes),
        "cases": cases,
    }


def failure_sentence(parity: dict, report_path: Path) -> str:
    bad = [c for c in parity["cases"] if c["max_abs_logits"] > parity["tolerance"]["max_abs_logits"]
           or c["top1_agreement"] < 1.0] or parity["cases"]
    c = max(bad, key=lambda c: c["max_abs_logits"])
    return (f"ONNX Runtime and PyTorch disagree (max |Δ logits| {parity['max_abs_logits']:.2e} against a tolerance of "
            f"{parity['tolerance']['max_abs_logits']:.0e}, top-1 agreement {parity['top1_agreement']:.1%}, worst at "
            f"{c['height']}x{c['width']} batch {c['batch']}, max |Δ features| {parity['max_abs_features']:.2e}): "
            f"nothing was exported; report this with {report_path}.")


def metrics_accuracy(run_dir: Path) -> float | None:
    """The run's own val accuracy from metrics.json (as a fraction), when the run wrote one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    for key in ("accuracy", "val_accuracy", "top1", "top1_accuracy"):
        value = metrics.get(key)
        if isinstance(value, dict):
            value = value.get("top1", value.get("accuracy"))
        if isinstance(value, (int, float)):
            return float(value) / (100.0 if value > 1.0 else 1.0)
    return None


def onnx_accuracy(model_path: Path, samples: Sequence, providers: Sequence[str] | None = (CPU,)) -> dict:
    """Top-1 of an ONNX classifier with zoo.edge (ONNX Runtime + preprocess.json, no torch)."""
    from zoo.edge import EdgeModel

    edge = EdgeModel(model_path, providers=providers, ood=False)
    results = edge.predict([s.path for s in samples], top_k=1)
    scored = [(r, s) for r, s in zip(results, samples, strict=True) if r.ok]
    correct = sum(r.label == edge.labels[s.label] for r, s in scored)
    return {"accuracy": correct / len(scored) if scored else 0.0, "images": len(scored),
            "unreadable": len(samples) - len(scored)}


def onnx_val_accuracy(classifier_path: Path, val: Sequence, run_dir: Path) -> dict:
    measured = onnx_accuracy(classifier_path, val)
    reference = metrics_accuracy(run_dir)
    out = {"onnx_fp32": measured["accuracy"], "images": measured["images"], "unreadable": measured["unreadable"],
           "runtime": "onnxruntime CPUExecutionProvider + preprocess.json (zoo.edge, no torch)",
           "metrics_json": reference}
    if reference is not None:
        out["delta_points"] = round(100 * (measured["accuracy"] - reference), 3)
    return out
