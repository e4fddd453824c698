"""`zoo export`: a run directory -> classifier.onnx, features.onnx, preprocess.json, labels.json,
export_report.json, accuracy-gated int8/fp16 variants of both graphs, and deploy.json (which runs).

Both graphs take "image", float32 [N, 3, H, W] already normalised by zoo.preprocess, with dynamic
batch, height and width. Nothing is moved into the output folder until the graphs pass
onnx.checker and the parity check against PyTorch, so a failed export never leaves files that
look usable.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import onnx

import zoo.preprocess as zoo_preprocess
from zoo.atomic import atomic_write_json, writing
from zoo.backbones import ZooModel
from zoo.data.folder import ImageFolderData
from zoo.deployment import MANIFEST
from zoo.errors import UsageError, ZooError
from zoo.export import deploy as deploy_mod
from zoo.export import ood, parity
from zoo.export import report as report_mod
from zoo.export.formats import AUTO_DEPLOY, DEPLOY_CHOICES, NO_QUANTIZATION, QUANTIZE_VARIANTS
from zoo.export.run_images import parity_images, run_data
from zoo.export.trace import combined_graph
from zoo.inference import OOD_FILE
from zoo.log import get_logger
from zoo.run_dir import LABELS, TrainedRun, load_run

log = get_logger(__name__)

CLASSIFIER = "classifier.onnx"
FEATURES = "features.onnx"
PREPROCESS = "preprocess.json"
# The preprocessing module itself (numpy + Pillow only) travels with the graphs, so an edge device
# needs nothing but this folder and `pip install onnxruntime numpy pillow` (see the README snippet).
PREPROCESS_MODULE = "preprocess.py"
REPORT = "export_report.json"
OUTPUTS = (CLASSIFIER, FEATURES, PREPROCESS, PREPROCESS_MODULE, LABELS, REPORT, MANIFEST, OOD_FILE) + tuple(
    f"{kind}.{v}.onnx" for kind in ("classifier", "features") for v in QUANTIZE_VARIANTS)

# The dynamo-based exporter (torch.export) is used. Both it and the TorchScript one (dynamo=False,
# about 3x faster to export but deprecated) keep efficientnet_lite's TF-SAME padding dynamic: the
# pad amount `size % 2` becomes Shape/Mod nodes, not a constant. The parity check at odd sizes
# (97x301) proves that again on every export.
MIN_OPSET = 18  # the dynamo exporter's own opset floor
MAX_OPSET = 23  # the newest opset tested end to end (export, parity, int8) with onnxruntime 1.31
DEFAULT_OPSET = 18  # the oldest that works, so the widest range of edge runtimes can load it
# The classifier graph also answers the pooled features it computes anyway, so the OOD score
# (zoo.inference.OodScorer) costs one small matrix product per image and no second forward pass.
CLASSIFIER_OUTPUTS = ("logits", "probabilities", "features")


def classifier_graph(model: ZooModel, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The classifier graph (logits, probabilities, features), unchecked: what latency is measured on."""
    return _cut(combined_graph(model.eval(), opset)[0], CLASSIFIER_OUTPUTS)


def _cut(combined: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The sub-graph from "image" to `outputs` (unused nodes and weights dropped)."""
    graph = onnx.helper.make_graph(
        list(combined.graph.node), combined.graph.name, list(combined.graph.input),
        [o for o in combined.graph.output if o.name in outputs], list(combined.graph.initializer))
    model = onnx.helper.make_model(graph, opset_imports=list(combined.opset_import), ir_version=combined.ir_version,
                                   functions=list(combined.functions))
    return _output_apart(_prune(model), "features")


def _output_apart(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Make graph output `name` the result of an Identity, so no node reads a graph output.

    The classifier's pooled features feed its last layer and are an output too; onnxconverter-common
    (fp16) then writes a mistyped graph (the last layer reading float32 and float16). An Identity
    between them keeps the internal tensor internal; ONNX Runtime removes it again when it loads.
    """
    if not any(name in node.input for node in model.graph.node):
        return model
    inner = f"{name}_pooled"
    for node in model.graph.node:
        node.output[:] = [inner if o == name else o for o in node.output]
        node.input[:] = [inner if i == name else i for i in node.input]
    model.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_output"))
    return model


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
    features = {"features": {"shape": ["batch", feature_dim],
                             "meaning": "the bottleneck vector: globally pooled activations before the classifier"}}
    if kind == "classifier":
        return {"logits": {"shape": ["batch", num_classes],
                           "meaning": "unnormalised class scores, in labels.json order"},
                "probabilities": {"shape": ["batch", num_classes],
                                  "meaning": "softmax of logits (computed in the graph)"},
                **features}
    return features


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
    model.doc_string = (f"zoo {kind} for {run.config['model']}: input 'image' float32 [N,3,H,W] normalised as "
                        "preprocess.json says")


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """onnx.checker with full_check (which runs strict shape inference), then save."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ZooError(f"The exported {path.name} failed onnx.checker ({str(e).splitlines()[0]}): "
                       "report this with the model name, it is a bug in zoo's export.") from None
    onnx.save_model(model, str(path))


# ---------------------------------------------------------------- the export
def check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is not supported: choose an opset from {MIN_OPSET} to {MAX_OPSET}.")
    return opset


def check_quantize(quantize: str | Sequence[str] | None) -> list[str]:
    if quantize is None or quantize == NO_QUANTIZATION:
        return []
    wanted = [quantize] if isinstance(quantize, str) else list(quantize)
    bad = [q for q in wanted if q not in QUANTIZE_VARIANTS]
    if bad:
        raise UsageError(f"--quantize {bad[0]} is not a variant zoo makes: choose "
                         f"{', '.join((NO_QUANTIZATION, *QUANTIZE_VARIANTS))}.")
    return list(dict.fromkeys(wanted))


def check_deploy(deploy: str | None, variants: list[str]) -> str:
    asked = AUTO_DEPLOY if deploy is None else str(deploy)
    if asked not in DEPLOY_CHOICES:
        raise UsageError(f"--deploy {asked} is not a choice: choose {', '.join(DEPLOY_CHOICES)}.")
    deploy_mod.check_asked(asked, variants)
    return asked


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file: choose another --out folder.")
    # A report alone (a failed export) is not an export a user could lose.
    existing = [n for n in OUTPUTS if n != REPORT and (out_dir / n).exists()]
    if existing and not force:
        raise UsageError(f"{out_dir} already holds an export ({', '.join(existing)}): pass --force to replace it "
                         "or choose another --out folder.")


def export_run(run_dir: Path | str, out_dir: Path | str | None = None, opset: int | None = None,
               quantize: str | Sequence[str] | None = NO_QUANTIZATION, force: bool = False,
               data_dir: Path | str | None = None, max_accuracy_drop: float = 1.0, parity_atol: float = 1e-4,
               parity_sizes: Sequence[tuple[int, int]] | None = None, calibration_images: int = 64,
               deploy: str | None = None) -> dict:
    """Export a run directory; returns the export report (also written to OUT/export_report.json).

    `deploy` (default auto) chooses the variant deploy.json records (export/deploy.py). Given alone
    on a folder that already holds an export of this run, it only chooses again: nothing is re-exported.
    Raises ZooError when parity fails or when a quantized variant loses more than
    `max_accuracy_drop` top-1 points on the val split (the fp32 export is kept in that case).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    opset = check_opset(opset)
    variants = check_quantize(quantize)
    if deploy is not None and not variants and not force and deploy_mod.is_export_of(out_dir, REPORT, run_dir):
        asked = check_deploy(deploy, [*QUANTIZE_VARIANTS])
        with writing(out_dir):  # a read-only folder: one sentence, deploy.json left as it was
            return deploy_mod.redeploy(out_dir, REPORT, asked)
    asked = check_deploy(deploy, variants)
    check_out_dir(out_dir, force)
    run = load_run(run_dir)
    data = run_data(run, data_dir)
    if variants and (data is None or not data.train or not data.val):
        raise ZooError("Quantization needs the run's training images for calibration and its val images for the "
                       "accuracy gate: give the image folder the run was trained on with --data.")
    with writing(out_dir):  # a read-only folder or a full disk: one sentence; the staging folder is removed
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
        try:
            report = write_graphs(run, staging, out_dir, opset)
            check_parity(run, data, staging, out_dir, report, parity_sizes or parity.DEFAULT_SIZES, parity_atol)
            measure_accuracy(run, data, staging, report)
            refused = make_variants(run, data, staging, report, variants, calibration_images, max_accuracy_drop)
            report["ood"] = ood.write_summary(run, data, staging, report)
            report["deploy"] = deploy_mod.manifest(report, asked, report["target"])
            deploy_mod.write(staging, report["deploy"])
            report["seconds"] = round(time.perf_counter() - started, 1)
            report["ok"] = True
            report_mod.write(staging / REPORT, report)
            _publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if refused:
        from zoo.export.quantize import refusal_sentence

        raise ZooError(refusal_sentence(refused, out_dir / REPORT))
    return report


def write_graphs(run: TrainedRun, staging: Path, out_dir: Path, opset: int) -> dict:
    """classifier.onnx, features.onnx (checked), preprocess.json and labels.json; the report begun."""
    model, feature_dim = run.model.eval(), int(run.model.feature_dim)
    log.info(f"Exporting {run.config['model']} to ONNX (opset {opset}, dynamic batch, height and width)")
    tick = time.perf_counter()
    combined, origin = combined_graph(model, opset)
    traced = {"graph": origin, "seconds": round(time.perf_counter() - tick, 1)}
    graphs = {"classifier": _cut(combined, CLASSIFIER_OUTPUTS), "features": _cut(combined, ("features",))}
    for kind, graph in graphs.items():
        set_metadata(graph, kind, run, feature_dim)
        save_checked(graph, staging / f"{kind}.onnx")
    run.preprocess.save(staging / PREPROCESS)
    shutil.copyfile(Path(zoo_preprocess.__file__), staging / PREPROCESS_MODULE)
    atomic_write_json(staging / LABELS, run.labels)
    report = report_mod.new_report(run, out_dir, opset, feature_dim)
    report["checker"] = {CLASSIFIER: "passed (full_check)", FEATURES: "passed (full_check)"}
    report["trace"] = traced
    return report


def check_parity(run: TrainedRun, data: ImageFolderData | None, staging: Path, out_dir: Path, report: dict,
                 sizes: Sequence[tuple[int, int]], atol: float) -> None:
    """The graphs against PyTorch on real images; a failed check leaves only its report behind."""
    log.info("Checking parity with PyTorch on real images")
    images, names = parity_images(data, run.preprocess)
    result = parity.check_parity(run.model, staging / CLASSIFIER, staging / FEATURES, images, run.preprocess,
                                 sizes=sizes, atol=atol)
    result["images"] = names
    report["parity"] = result
    if not result["ok"]:
        _publish(staging, out_dir, only_report=report | {"ok": False})
        raise ZooError(parity.failure_sentence(result, out_dir / REPORT))


def measure_accuracy(run: TrainedRun, data: ImageFolderData | None, staging: Path, report: dict) -> None:
    if data is not None and data.val:
        log.info(f"Measuring val accuracy with ONNX Runtime on {len(data.val)} images")
        report["val_accuracy"] = parity.onnx_val_accuracy(staging / CLASSIFIER, data.val, run.run_dir)
    else:
        report["val_accuracy"] = {"skipped": "the run's image folder is not known: pass --data to measure it"}


def make_variants(run: TrainedRun, data: ImageFolderData | None, staging: Path, report: dict, variants: list[str],
                  calibration_images: int, max_accuracy_drop: float) -> list[dict]:
    """Each asked-for variant of both graphs, made, gated and timed where they will run; returns the refused ones."""
    report["target"] = deploy_mod.detect_target(staging / CLASSIFIER)
    if not variants:
        return []
    from zoo.export import quantize as quantize_mod  # onnxruntime.quantization loads only when asked for

    refused = []
    for kind, key in deploy_mod.REPORT_KEYS.items():
        report[key] = {}
        for variant in variants:
            log.info(f"Making the {variant} variant of {kind}.onnx and measuring it against fp32")
            info = quantize_mod.make_variant(
                variant, staging, run, data, int(run.model.feature_dim), calibration_images=calibration_images,
                max_accuracy_drop=max_accuracy_drop, kind=kind, provider=report["target"]["provider"])
            report[key][variant] = info
            refused += [info] if info["status"] == "refused" else []
    return refused


def _publish(staging: Path, out_dir: Path, only_report: dict | None = None) -> None:
    """Move the checked files into place; outputs of an earlier export not made this time are removed.

    With `only_report` (a failed export) the folder is left holding that report and nothing else of
    ours, so an older model can never be mistaken for the result of this export.
    """
    keep = () if only_report is not None else [p.name for p in staging.iterdir()]
    for name in OUTPUTS:
        if name not in keep and (out_dir / name).exists():
            (out_dir / name).unlink()
    if only_report is not None:
        report_mod.write(out_dir / REPORT, only_report)
        return
    for name in keep:
        os.replace(staging / name, out_dir / name)
