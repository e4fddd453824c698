"""export_report.json: what was exported, from what, and the figures that prove it."""
from __future__ import annotations

import platform
from pathlib import Path

import onnx
import onnxruntime
import torch

from zoo.atomic import atomic_write_json
from zoo.run_dir import TrainedRun

REPORT_VERSION = 1


def new_report(run: TrainedRun, out_dir: Path, opset: int, feature_dim: int) -> dict:
    return {
        "report_version": REPORT_VERSION,
        "run_dir": str(run.run_dir),
        "out_dir": str(out_dir),
        "model": run.config["model"],
        "strategy": run.config.get("strategy"),
        "layer": run.config.get("layer"),
        "num_classes": len(run.labels),
        "feature_dim": feature_dim,
        "files": {"classifier": "classifier.onnx", "features": "features.onnx",
                  "preprocess": "preprocess.json", "labels": "labels.json"},
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                  "normalised_by": "zoo.preprocess with preprocess.json"},
        "outputs": {"classifier.onnx": ["logits", "probabilities"], "features.onnx": ["features"]},
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
    }


def write(path: Path, report: dict) -> None:
    atomic_write_json(path, report)


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal: parity, accuracy, variants."""
    p = report["parity"]
    lines = [f"parity: max |Δ logits| {p['max_abs_logits']:.2e}, max |Δ features| {p['max_abs_features']:.2e}, "
             f"top-1 agreement {p['top1_agreement']:.0%} at " + ", ".join(f"{h}x{w}" for h, w in p["sizes"])
             + f", batch {' and '.join(map(str, p['batch_sizes']))}"]
    acc = report.get("val_accuracy", {})
    if "onnx_fp32" in acc:
        ref = acc.get("metrics_json")
        lines.append(f"val accuracy (ONNX Runtime, {acc['images']} images): {acc['onnx_fp32']:.2%}"
                     + (f"; metrics.json {ref:.2%} (Δ {acc['delta_points']:+.2f} points)" if ref is not None else ""))
    for key, kind in (("variants", "classifier"), ("feature_variants", "features")):
        for name, v in report.get(key, {}).items():
            extra = f", cosine to fp32 {v['cosine_mean']:.4f} (min {v['cosine_min']:.4f})" if "cosine_mean" in v else ""
            lines.append(f"{kind} {name}: {v['status']}, val accuracy {v['val_accuracy']:.2%} "
                         f"(drop {v['drop_points']:+.2f} points, limit {v['threshold_points']}){extra}, "
                         f"{v['speed_ratio']:.2f}x the speed of fp32 at batch 1")
    for kind in ("classifier", "features"):
        entry = report.get("deploy", {}).get(kind)
        if entry:
            lines.append(f"deployed {kind}: {entry['variant']} ({entry['file']}): {entry['reason']}")
    return lines
