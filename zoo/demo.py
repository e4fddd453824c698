"""`zoo demo`: the whole pipeline on the embedded textures sample, ending in a summary table.

sample -> advise -> finetune (the advisor's strategy) -> export (ONNX, int8 where the gate allows,
.mar archives) -> edge predictions -> TorchServe and HTTP predictions on images of different sizes
-> stop the server. Every step calls the same library functions the commands use. A seeded share of
the training images (TEST_FRACTION) is held out as the test split: the advisor, the epoch choice and
the int8 gate never see it, and it gives the figures the summary reports.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.errors import ZooError
from zoo.log import get_logger

log = get_logger(__name__)
TEST_FRACTION = 0.2


@dataclass
class DemoPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "textures"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def store(self) -> Path:
        return self.root / "model_store"


@dataclass
class Stopwatch:
    """Seconds per step, in the order the steps ran."""

    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self.last = now - self.last, now


def _resized_variants(path: Path) -> list[tuple[str, bytes]]:
    """One val image sent as several sizes, aspect ratios and formats, as users would send it."""
    img = Image.open(path).convert("RGB")
    out = []
    for (w, h), fmt in [((224, 224), "JPEG"), ((320, 180), "PNG"), ((97, 301), "WEBP"), ((640, 480), "JPEG")]:
        buf = io.BytesIO()
        img.resize((w, h)).save(buf, fmt)
        out.append((f"{w}x{h}.{fmt.lower()}", buf.getvalue()))
    return out


def train_and_export(paths: DemoPaths, model: str, clock: Stopwatch) -> dict[str, Any]:
    """Steps 1-4: the sample, the advice, the run and its export with archives."""
    from zoo.advisor import advise
    from zoo.data.samples import write_sample
    from zoo.export.archive import write_archives
    from zoo.export.onnx_export import export_run
    from zoo.training.finetune import finetune

    log.info("1/7 sample dataset: textures (scikit-image's natural textures)")
    write_sample("textures", paths.data, seed=0, force=True)
    clock.step("sample")
    log.info("2/7 advise: measure size and similarity")
    advice = advise(paths.data, model=model, test_fraction=TEST_FRACTION)
    log.info(f"    {advice.quadrant} -> strategy {advice.strategy} (similarity {advice.similarity:.2f}, "
             f"{advice.images} images)")
    clock.step("advise")
    log.info(f"3/7 finetune --strategy {advice.strategy}")
    metrics = finetune(paths.data, model=model, strategy=advice.strategy, out=paths.run, force=True,
                       test_fraction=TEST_FRACTION, **({"layer": advice.layer} if advice.layer else {}))
    clock.step("finetune")
    log.info("4/7 export: ONNX (+ int8 where the accuracy gate allows) and TorchServe archives")
    try:
        report = export_run(paths.run, paths.export, quantize="int8", force=True)
    except ZooError as e:  # the gate refused int8: keep the verified fp32 export
        log.info(f"    int8 refused: {e}")
        report = export_run(paths.run, paths.export, quantize="none", force=True)
    mars = write_archives(paths.export, "textures", paths.store)
    clock.step("export")
    return {"advice": advice, "metrics": metrics, "report": report, "archives": [str(m) for m in mars]}


def edge_check(paths: DemoPaths) -> dict[str, Any]:
    """Step 5: `zoo evaluate` of the export on the test split, ONNX Runtime alone."""
    from zoo.data.folder import load_image_folder
    from zoo.edge import EdgeModel
    from zoo.evaluate.evaluate import evaluate

    log.info("5/7 edge: `zoo evaluate` of the export on the held-out test split, ONNX Runtime alone")
    data = load_image_folder(paths.data, test_fraction=TEST_FRACTION)
    result = evaluate(str(paths.export), paths.data, "test", out=paths.root / "evaluate-test", force=True)
    return {"edge": EdgeModel(paths.export), "data": data, "accuracy": result["metrics"]["accuracy"],
            "ece": result["metrics"]["calibration"]["ece"], "seconds_per_image": result["latency_ms"]["mean"] / 1000}


def serve_check(paths: DemoPaths, edge_result: dict[str, Any], port: int | None) -> dict[str, Any]:
    """Steps 6-7: TorchServe, HTTP predictions of resized val images against the edge's, then stop."""
    from zoo.serve import ServeClient, ServeConfig, free_port_block, start, stop

    edge, data = edge_result["edge"], edge_result["data"]
    port = port or free_port_block()
    log.info(f"6/7 serve: TorchServe on 127.0.0.1:{port}, HTTP predictions on images of different sizes")
    cfg = ServeConfig(model_store=paths.store, models=("textures",), port=port)
    info = start(cfg)
    try:
        client = ServeClient(f"{info.inference_url}/predictions/textures")
        agree, max_dp, latencies = 0, 0.0, []
        picked = data.val[:: max(1, len(data.val) // 6)][:6]
        variants = [(name, blob) for s in picked for name, blob in _resized_variants(s.path)]
        for _, blob in variants:
            t0 = time.perf_counter()
            answer = client.classify(blob, topk=len(data.classes))
            latencies.append(time.perf_counter() - t0)
            local = edge.predict([blob], top_k=len(data.classes))[0].top_k
            agree += next(iter(answer)) == next(iter(local))
            max_dp = max(max_dp, max(abs(answer[k] - local[k]) for k in local))
    finally:
        stop(cfg.folder)
        log.info("7/7 server stopped")
    return {"requests": len(variants), "top1_agreement": agree / len(variants), "max_abs_dp": max_dp,
            "variant": client.variant,
            "p50_ms": 1000 * float(np.median(latencies)), "sizes": sorted({n for n, _ in variants})}


def run_demo(out: Path = Path("demo-out"), model: str = "efficientnet_lite0", port: int | None = None,
             serve: bool = True) -> dict[str, Any]:
    paths, clock = DemoPaths(Path(out)), Stopwatch()
    trained = train_and_export(paths, model, clock)
    edge = edge_check(paths)
    clock.step("edge")
    served = serve_check(paths, edge, port) if serve else {}
    clock.step("serve")
    advice, report = trained["advice"], trained["report"]
    return {
        "strategy": advice.strategy, "quadrant": advice.quadrant, "similarity": advice.similarity,
        "val_accuracy_torch": trained["metrics"].get("accuracy"),
        "test_accuracy_torch": (trained["metrics"].get("test") or {}).get("accuracy"),
        "test_accuracy_onnx": edge["accuracy"], "test_ece_onnx": edge["ece"], "test_images": len(edge["data"].test),
        "parity_max_abs_logits": report["parity"]["max_abs_logits"],
        "int8": report.get("variants", {}).get("int8"),
        "deployed": {kind: entry["variant"] for kind, entry in report.get("deploy", {}).items()
                     if kind in ("classifier", "features")},
        "edge_variant": edge["edge"].variant, "served_variant": served.get("variant"),
        "edge_ms_per_image": 1000 * edge["seconds_per_image"], "served": served,
        "artifacts": {"run": str(paths.run), "export": str(paths.export), "archives": trained["archives"]},
        "timings_s": clock.timings, "total_s": time.perf_counter() - clock.started,
    }


def summary_table(s: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="zoo demo: textures sample, end to end")
    t.add_column("what")
    t.add_column("figure")
    add = t.add_row
    add("advisor", f"{s['quadrant']} -> {s['strategy']} (similarity {s['similarity']:.2f})")
    add("val accuracy (PyTorch; chose the epoch)", f"{s['val_accuracy_torch']:.2%}")
    add(f"test accuracy (PyTorch, {s['test_images']} held-out images)", f"{s['test_accuracy_torch']:.2%}")
    add("test accuracy (ONNX Runtime alone, zoo evaluate)", f"{s['test_accuracy_onnx']:.2%} (ECE "
        f"{s['test_ece_onnx']:.3f})")
    add("export parity max |Δ logits|", f"{s['parity_max_abs_logits']:.1e}")
    if s["int8"]:
        v = s["int8"]
        add("int8", f"{v['status']}: accuracy {v['val_accuracy']:.2%}, {v['speed_ratio']:.2f}x fp32 speed")
    if s.get("deployed"):
        ran = f"; edge ran {s['edge_variant']}" + (f", server answered {s['served_variant']}" if s["served"] else "")
        add("deployed (deploy.json)", ", ".join(f"{k} {v}" for k, v in s["deployed"].items()) + ran)
    add("edge latency", f"{s['edge_ms_per_image']:.1f} ms / image")
    if s["served"]:
        sv = s["served"]
        add("served vs edge", f"top-1 agreement {sv['top1_agreement']:.0%}, max |Δp| {sv['max_abs_dp']:.1e} "
            f"over {sv['requests']} requests ({', '.join(sv['sizes'])})")
        add("served latency p50", f"{sv['p50_ms']:.1f} ms ({sv['p50_ms'] / s['edge_ms_per_image']:.1f}x edge)")
    for k, v in s["artifacts"].items():
        add(k, ", ".join(v) if isinstance(v, list) else v)
    add("wall time", f"{s['total_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in s["timings_s"].items()) + ")")
    return t
