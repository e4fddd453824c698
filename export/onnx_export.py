"""`zoo export`: a run directory -> classifier.onnx, features.onnx, preprocess.json, labels.json,
export_report.json, and accuracy-gated int8/fp16 variants of the classifier.

Both graphs take "image", float32 [N, 3, H, W] already normalised by zoo.preprocess, with dynamic
batch, height and width. Nothing is moved into the output folder until the graphs pass
onnx.checker and the parity check against PyTorch, so a failed export never leaves files that
look usable.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import onnx
import torch
from PIL import Image
from torch import nn

import zoo.preprocess as zoo_preprocess
from zoo.errors import ZooError
from zoo.preprocess import ImageError, PreprocessConfig, load_rgb
from zoo.run_dir import LABELS, TrainedRun, atomic_write_json, load_run

CLASSIFIER = "classifier.onnx"
FEATURES = "features.onnx"
PREPROCESS = "preprocess.json"
# The preprocessing module itself (numpy + Pillow only) travels with the graphs, so an edge device
# needs nothing but this folder and `pip install onnxruntime numpy pillow` (see the README snippet).
PREPROCESS_MODULE = "preprocess.py"
REPORT = "export_report.json"
VARIANTS = ("int8", "fp16")
OUTPUTS = (CLASSIFIER, FEATURES, PREPROCESS, PREPROCESS_MODULE, LABELS, REPORT) + tuple(f"classifier.{v}.onnx" for v in VARIANTS)

# The dynamo-based exporter (torch.export) is used. Both it and the TorchScript one (dynamo=False,
# about 3x faster to export but deprecated) keep efficientnet_lite's TF-SAME padding dynamic: the
# pad amount `size % 2` becomes Shape/Mod nodes, not a constant. The parity check at odd sizes
# (97x301) proves that again on every export.
MIN_OPSET = 18  # the dynamo exporter's own opset floor
MAX_OPSET = 23  # the newest opset tested end to end (export, parity, int8) with onnxruntime 1.31
DEFAULT_OPSET = 18  # the oldest that works, so the widest range of edge runtimes can load it
# Batch 2 and H != W: torch.export specialises sizes of 1, and a square example made it fail on
# convnext_tiny ("Invalid ranges").
EXAMPLE_SHAPE = (2, 3, 64, 96)


class _Exportable(nn.Module):
    """The run's model with the three outputs both graphs are cut from."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        features = self.model.forward_features(image)
        logits = self.model.forward_head(features)
        return logits, torch.softmax(logits, dim=1), features


def _export_combined(model: nn.Module, opset: int) -> onnx.ModelProto:
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
    example = torch.zeros(EXAMPLE_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Exportable(model).eval(), (example,), None, dynamo=True, opset_version=opset, verbose=False,
            input_names=["image"], output_names=["logits", "probabilities", "features"],
            dynamic_shapes={"image": {0: batch, 2: height, 3: width}}, optimize=True)
    return program.model_proto


def _cut(combined: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The sub-graph from "image" to `outputs` (unused nodes and weights dropped)."""
    graph = onnx.helper.make_graph(
        list(combined.graph.node), combined.graph.name, list(combined.graph.input),
        [o for o in combined.graph.output if o.name in outputs], list(combined.graph.initializer))
    model = onnx.helper.make_model(graph, opset_imports=list(combined.opset_import), ir_version=combined.ir_version,
                                   functions=list(combined.functions))
    return _prune(model)


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del model.graph.node[:]
    model.graph.node.extend(kept)
    inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def output_descriptions(kind: str, num_classes: int, feature_dim: int) -> dict:
    if kind == "classifier":
        return {"logits": {"shape": ["batch", num_classes], "meaning": "unnormalised class scores, in labels.json order"},
                "probabilities": {"shape": ["batch", num_classes], "meaning": "softmax of logits (computed in the graph)"}}
    return {"features": {"shape": ["batch", feature_dim],
                         "meaning": "the bottleneck vector: globally pooled activations before the classifier"}}


def set_metadata(model: onnx.ModelProto, kind: str, run: TrainedRun, feature_dim: int, precision: str = "fp32") -> None:
    props = {
        "zoo.kind": kind,
        "zoo.model": run.config["model"],
        "zoo.labels": json.dumps(run.labels),
        "zoo.preprocess": json.dumps(run.preprocess.to_json()),
        "zoo.outputs": json.dumps(output_descriptions(kind, len(run.labels), feature_dim)),
        "zoo.layer": run.config.get("layer") or "",
        "zoo.strategy": run.config.get("strategy") or "",
        "zoo.precision": precision,
    }
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    model.producer_name = "zoo"
    model.doc_string = f"zoo {kind} for {run.config['model']}: input 'image' float32 [N,3,H,W] normalised as preprocess.json says"


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """onnx.checker with full_check (which runs strict shape inference), then save."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ZooError(f"The exported {path.name} failed onnx.checker ({str(e).splitlines()[0]}): "
                       "report this with the model name, it is a bug in zoo's export.") from None
    onnx.save_model(model, str(path))


def _progress(log: Callable[[str], None] | None, message: str) -> None:
    if log:
        log(message)


# ---------------------------------------------------------------- data of the run
def run_data(run: TrainedRun, data_dir: Path | str | None):
    """The run's ImageFolder split (train, val), or None when neither the caller nor config.json says where."""
    from zoo.data.folder import load_image_folder

    cfg = run.config
    recorded = cfg.get("data")  # `zoo finetune` writes {"dir": ..., ...}
    root = data_dir or (recorded.get("dir") if isinstance(recorded, dict) else recorded) or cfg.get("data_dir")
    if not root:
        return None
    if not Path(root).is_dir():
        if data_dir:
            raise ZooError(f"{root} is not a folder: give the image folder the run was trained on with --data.")
        return None
    data = load_image_folder(root, val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0))
    if list(data.classes) != list(run.labels):
        raise ZooError(f"The classes in {root} ({', '.join(data.classes[:5])}…) differ from the run's labels.json: "
                       "give the image folder the run was trained on with --data.")
    return data


def spread(samples: list, n: int) -> list:
    """Up to n samples taken round-robin over classes, in a stable order."""
    by_label: dict[int, list] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    out, queues = [], [list(v) for _, v in sorted(by_label.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _packaged_photos() -> list[Path]:
    """Real photos from scikit-image's data folder: parity images when the run's data is not at hand."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "data"
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
    return [folder / n for n in names if (folder / n).is_file()]


def parity_images(data, cfg: PreprocessConfig, n: int = 5) -> tuple[list[Image.Image], list[str]]:
    candidates = [s.path for s in spread(data.val or data.train, 4 * n)] if data is not None else []
    candidates += _packaged_photos()
    images, names = [], []
    for path in candidates:
        try:
            images.append(load_rgb(path, cfg))
            names.append(str(path))
        except ImageError:
            continue
        if len(images) == n:
            break
    if not images:
        raise ZooError("No readable image was found for the parity check: give the run's image folder with --data.")
    while len(images) < n:  # fewer images than the largest batch: repeat them
        images.append(images[len(images) % len(names)])
    return images, names


# ---------------------------------------------------------------- the export
def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ZooError(f"--opset {opset} is not supported: choose an opset from {MIN_OPSET} to {MAX_OPSET}.")
    return opset


def check_quantize(quantize: str | Sequence[str] | None) -> list[str]:
    if quantize is None or quantize == "none":
        return []
    wanted = [quantize] if isinstance(quantize, str) else list(quantize)
    bad = [q for q in wanted if q not in VARIANTS]
    if bad:
        raise ZooError(f"--quantize {bad[0]} is not a variant zoo makes: choose none, int8 or fp16.")
    return list(dict.fromkeys(wanted))


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ZooError(f"{out_dir} is a file: choose another --out folder.")
    # A report alone (a failed export) is not an export a user could lose.
    existing = [n for n in OUTPUTS if n != REPORT and (out_dir / n).exists()]
    if existing and not force:
        raise ZooError(f"{out_dir} already holds an export ({', '.join(existing)}): pass --force to replace it "
                       "or choose another --out folder.")


def export_run(run_dir: Path | str, out_dir: Path | str | None = None, opset: int | None = None,
               quantize: str | Sequence[str] | None = "none", force: bool = False, data_dir: Path | str | None = None,
               max_accuracy_drop: float = 1.0, parity_atol: float = 1e-4,
               parity_sizes: Sequence[tuple[int, int]] | None = None, calibration_images: int = 64,
               log: Callable[[str], None] | None = None) -> dict:
    """Export a run directory; returns the export report (also written to OUT/export_report.json).

    Raises ZooError when parity fails or when a quantized variant loses more than
    `max_accuracy_drop` top-1 points on the val split (the fp32 export is kept in that case).
    """
    from export import parity as parity_mod
    from export import report as report_mod

    started = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    opset = check_opset(opset)
    variants = check_quantize(quantize)
    check_out_dir(out_dir, force)
    run = load_run(run_dir)
    data = run_data(run, data_dir)
    if variants and (data is None or not data.train or not data.val):
        raise ZooError("Quantization needs the run's training images for calibration and its val images for the "
                       "accuracy gate: give the image folder the run was trained on with --data.")
    model = run.model.eval()
    feature_dim = int(model.feature_dim)

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        _progress(log, f"Exporting {run.config['model']} to ONNX (opset {opset}, dynamic batch, height and width)")
        combined = _export_combined(model, opset)
        graphs = {"classifier": _cut(combined, ("logits", "probabilities")), "features": _cut(combined, ("features",))}
        for kind, graph in graphs.items():
            set_metadata(graph, kind, run, feature_dim)
            save_checked(graph, staging / f"{kind}.onnx")
        run.preprocess.save(staging / PREPROCESS)
        shutil.copyfile(Path(zoo_preprocess.__file__), staging / PREPROCESS_MODULE)
        atomic_write_json(staging / LABELS, run.labels)

        report = report_mod.new_report(run, out_dir, opset, feature_dim)
        report["checker"] = {CLASSIFIER: "passed (full_check)", FEATURES: "passed (full_check)"}

        _progress(log, "Checking parity with PyTorch on real images")
        images, names = parity_images(data, run.preprocess)
        parity = parity_mod.check_parity(model, staging / CLASSIFIER, staging / FEATURES, images, run.preprocess,
                                         sizes=parity_sizes or parity_mod.DEFAULT_SIZES, atol=parity_atol)
        parity["images"] = names
        report["parity"] = parity
        if not parity["ok"]:
            _publish(staging, out_dir, only_report=report | {"ok": False})
            raise ZooError(parity_mod.failure_sentence(parity, out_dir / REPORT))

        if data is not None and data.val:
            _progress(log, f"Measuring val accuracy with ONNX Runtime on {len(data.val)} images")
            report["val_accuracy"] = parity_mod.onnx_val_accuracy(staging / CLASSIFIER, data.val, run_dir)
        else:
            report["val_accuracy"] = {"skipped": "the run's image folder is not known: pass --data to measure it"}

        refused = []
        if variants:
            from export import quantize as quantize_mod

            report["variants"] = {}
            for variant in variants:
                _progress(log, f"Making the {variant} variant and measuring it against fp32")
                info = quantize_mod.make_variant(variant, staging, run, data, feature_dim,
                                                 calibration_images=calibration_images,
                                                 max_accuracy_drop=max_accuracy_drop)
                report["variants"][variant] = info
                if info["status"] == "refused":
                    refused.append(info)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["ok"] = True
        report_mod.write(staging / REPORT, report)
        _publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if refused:
        raise ZooError(quantize_mod.refusal_sentence(refused, out_dir / REPORT))
    return report


def _publish(staging: Path, out_dir: Path, only_report: dict | None = None) -> None:
    """Move the checked files into place; outputs of an earlier export not made this time are removed.

    With `only_report` (a failed export) the folder is left holding that report and nothing else of
    ours, so an older model can never be mistaken for the result of this export.
    """
    from export import report as report_mod

    keep = () if only_report is not None else [p.name for p in staging.iterdir()]
    for name in OUTPUTS:
        if name not in keep and (out_dir / name).exists():
            (out_dir / name).unlink()
    if only_report is not None:
        report_mod.write(out_dir / REPORT, only_report)
        return
    for name in keep:
        os.replace(staging / name, out_dir / name)
