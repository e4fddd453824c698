"""int8 and fp16 variants of classifier.onnx and features.onnx, each gated against fp32 and timed.

int8: ONNX Runtime's static quantization, QDQ format, per-channel int8 weights and uint8
activations (the U8S8 pair that x86 VNNI kernels run fastest), calibrated on the run's training
images through zoo.preprocess. fp16: onnxconverter-common, inputs and outputs kept float32 so the
variant is a drop-in replacement.
"""
from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from zoo.export.onnx_export import set_metadata
from zoo.export.parity import onnx_accuracy
from zoo.export.run_images import spread
from zoo.inference import CPU, open_session
from zoo.preprocess import ImageError, preprocess
from zoo.run_dir import TrainedRun

CLASSIFIER_KIND = "classifier"


class TrainingImages(CalibrationDataReader):
    """Feeds the run's training images one by one, at the size zoo.preprocess gives each (any H, W)."""

    def __init__(self, paths: Sequence[Path], cfg):
        self.paths, self.cfg = list(paths), cfg
        self._iter: Iterator | None = None
        self.used = 0

    def _arrays(self):
        for p in self.paths:
            try:
                x = preprocess(p, self.cfg)
            except ImageError:
                continue  # unreadable training files are skipped, as training skipped them
            self.used += 1
            yield {"image": x[None]}

    def get_next(self):
        if self._iter is None:
            self._iter = self._arrays()
        return next(self._iter, None)

    def rewind(self):
        self._iter = None
        self.used = 0


def quantize_int8(fp32_path: Path, out_path: Path, calibration: TrainingImages) -> int:
    """Write the int8 model; returns how many Pads run on uint8 (see fuse_quantized_pads)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Folds BatchNorm into Conv and fixes shapes first, so each Conv quantizes as one QLinearConv;
        # symbolic shape inference is skipped because the sizes here are symbolic on purpose.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        # Probabilities stay float: an 8-bit softmax would round every probability to 1/255 steps.
        softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]
        quantize_static(str(prepared), str(out_path), calibration, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=softmax)
    model = onnx.load(str(out_path))
    fused = fuse_quantized_pads(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out_path))
    return fused


def fuse_quantized_pads(model: onnx.ModelProto) -> int:
    """Rewrite DequantizeLinear -> Pad -> QuantizeLinear as one Pad on the uint8 tensor; returns how many.

    ONNX Runtime keeps the float round trip around a Pad whose amounts are computed at run time
    (efficientnet_lite's SAME padding), so every stride-2 block dequantized, padded and requantized
    a whole feature map: a large share of the int8 time. With equal scale and zero point on both
    sides, padding the uint8 values with the zero point (which is exactly 0.0) gives the same result.
    """
    g = model.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fused = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        dq, users = producer.get(pad.input[0]), consumers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = inits.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        params = [inits.get(name) for name in (dq.input[1], dq.input[2], q.input[1], q.input[2])]
        if mode != b"constant" or value is None or float(value) != 0.0 or not _same_quantization(params):
            continue
        quantized_pad = onnx.helper.make_node("Pad", [dq.input[0], pad.input[1], dq.input[2]], [q.output[0]],
                                              name=f"{pad.name}_uint8", mode="constant")
        g.node.insert(list(g.node).index(pad), quantized_pad)
        g.node.remove(pad)
        g.node.remove(q)
        if len(consumers.get(dq.output[0], [])) == 1:
            g.node.remove(dq)
        fused += 1
    return fused


def _same_quantization(params: list[np.ndarray | None]) -> bool:
    """Scale and zero point of the DequantizeLinear and the QuantizeLinear around a Pad are constants and equal."""
    dq_scale, dq_zero, q_scale, q_zero = params
    if dq_scale is None or dq_zero is None or q_scale is None or q_zero is None:
        return False
    return bool(np.array_equal(dq_scale, q_scale) and np.array_equal(dq_zero, q_zero))


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    from onnxconverter_common import float16

    # Softmax stays float32: probabilities keep their precision, and converting it (a node whose input
    # is also a graph output) makes onnxconverter-common write a mistyped graph.
    blocked = list(float16.DEFAULT_OP_BLOCK_LIST) + ["Softmax"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight that is below fp16's range
        model = float16.convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True, op_block_list=blocked)
    onnx.save_model(model, str(out_path))


# Ops that compute on image tensors; shape arithmetic (the SAME padding sizes) is left out of the count.
COMPUTE_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Clip", "Relu", "Pad", "AveragePool", "GlobalAveragePool",
               "MaxPool", "ReduceMean", "Softmax", "Concat", "Sigmoid", "HardSwish", "HardSigmoid", "Flatten",
               "LayerNormalization", "BatchNormalization", "Erf"}


def quantized_ops(model: onnx.ModelProto) -> dict:
    """Per op type: how many compute nodes run quantized and how many in float.

    Quantized means DequantizeLinear in and QuantizeLinear out (ORT fuses these into QLinear ops),
    or reading a QuantizeLinear output directly (the Pads fuse_quantized_pads moved onto uint8).
    """
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_outputs = {o for n in model.graph.node if n.op_type == "QuantizeLinear" for o in n.output}
    q_inputs = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    # Tensors that only size other tensors (pad amounts, reshape targets), traced back to Shape.
    sizes = {n.input[1] for n in model.graph.node if n.op_type in ("Pad", "Reshape") and len(n.input) > 1}
    for n in reversed(model.graph.node):
        if n.output and all(o in sizes for o in n.output) and n.op_type != "Shape":
            sizes.update(n.input)
    quantized: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS or all(o in sizes for o in n.output):
            continue
        is_q = (any(i in dq_outputs for i in n.input) and any(o in q_inputs for o in n.output)) or (
            n.input and n.input[0] in q_outputs)
        (quantized if is_q else float_ops)[n.op_type] += 1
    return {"quantized": dict(quantized), "float": dict(float_ops)}


def latency_ms(path: Path, x: np.ndarray, runs: int = 20, provider: str = CPU) -> float:
    """Median batch-1 latency on `provider` with ORT's default (all) graph optimisations."""
    session = open_session(path, [provider])
    for _ in range(3):
        session.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def write_variant(variant: str, kind: str, staging: Path, run: TrainedRun, data, feature_dim: int,
                  calibration_images: int) -> dict:
    """<kind>.<variant>.onnx in staging, with zoo's metadata; returns how it was made."""
    fp32_path, path = staging / f"{kind}.onnx", staging / f"{kind}.{variant}.onnx"
    info: dict = {"file": path.name}
    if variant == "int8":
        reader = TrainingImages([s.path for s in spread(data.train, calibration_images)], run.preprocess)
        fused_pads = quantize_int8(fp32_path, path, reader)
        info.update(method="static QDQ, per-channel int8 weights, uint8 activations, MinMax calibration",
                    calibration_images=reader.used, calibration_split="train", pads_on_uint8=fused_pads)
    else:
        convert_fp16(fp32_path, path)
        info.update(method="float16 weights and activations (onnxconverter-common), float32 input and outputs")
    model = onnx.load(str(path))
    set_metadata(model, kind, run, feature_dim, precision=variant)
    onnx.save_model(model, str(path))
    if variant == "int8":
        info["ops"] = quantized_ops(model)
    return info


def make_variant(variant: str, staging: Path, run: TrainedRun, data, feature_dim: int, calibration_images: int = 64,
                 max_accuracy_drop: float = 1.0, kind: str = CLASSIFIER_KIND, provider: str = CPU) -> dict:
    """Write <kind>.<variant>.onnx into staging, gate and time it, and delete it again if the gate refuses it.

    The classifier's gate is its own val top-1; the features graph's is the run's classifier applied
    to its vectors (export/feature_gate.py). Latency is measured on `provider`, where it will run.
    """
    fp32_path = staging / f"{kind}.onnx"
    info = write_variant(variant, kind, staging, run, data, feature_dim, calibration_images)
    path = staging / info["file"]
    if kind == CLASSIFIER_KIND:
        fp32_acc = onnx_accuracy(fp32_path, data.val)["accuracy"]
        acc = onnx_accuracy(path, data.val)["accuracy"]
        info.update(gate="val top-1 of this classifier against classifier.onnx")
    else:
        from zoo.export.feature_gate import features_agreement

        info.update(features_agreement(fp32_path, path, run, data.val))
        fp32_acc, acc = info["fp32_val_accuracy"], info["val_accuracy"]
    drop = round(100 * (fp32_acc - acc), 3)
    x = preprocess(data.val[0].path, run.preprocess)[None]
    fp32_ms, variant_ms = latency_ms(fp32_path, x, provider=provider), latency_ms(path, x, provider=provider)
    info.update(val_accuracy=acc, fp32_val_accuracy=fp32_acc, val_images=len(data.val), drop_points=drop,
                threshold_points=max_accuracy_drop, latency_ms=round(variant_ms, 3), fp32_latency_ms=round(fp32_ms, 3),
                latency_input=list(x.shape), latency_provider=provider, speed_ratio=round(fp32_ms / variant_ms, 3),
                size_bytes=path.stat().st_size, fp32_size_bytes=fp32_path.stat().st_size)
    info["status"] = "refused" if drop > max_accuracy_drop else "accepted"
    if info["status"] == "refused":
        path.unlink()
    return info


def refusal_sentence(refused: list[dict], report_path: Path) -> str:
    parts = [f"{v['file']} loses {v['drop_points']:.2f} top-1 points on the val split ({v['fp32_val_accuracy']:.2%} -> "
             f"{v['val_accuracy']:.2%}), more than the {v['threshold_points']}-point limit" for v in refused]
    return ("; ".join(parts) + f", so it was not written (the fp32 export is in place, figures in {report_path}): "
            "use the fp32 model, or allow a larger drop with --max-accuracy-drop.")
