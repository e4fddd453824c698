"""`zoo demo`: the whole pipeline on the embedded textures sample, ending in a summary table.

sample -> advise -> finetune (the advisor's strategy) -> export (ONNX, int8 where the gate allows,
.mar archives) -> TorchServe -> HTTP predictions on images of different sizes -> edge predictions
-> stop the server. Every step calls the same library functions the commands use.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image

from zoo.errors import ZooError


def _resized_variants(path: Path) -> list[tuple[str, bytes]]:
    """One val image sent as several sizes, aspect ratios and formats, as users would send it."""
    img = Image.open(path).convert("RGB")
    out = []
    for (w, h), fmt in [((224, 224), "JPEG"), ((320, 180), "PNG"), ((97, 301), "WEBP"), ((640, 480), "JPEG")]:
        buf = io.BytesIO()
        img.resize((w, h)).save(buf, fmt)
        out.append((f"{w}x{h}.{fmt.lower()}", buf.getvalue()))
    return out


def run_demo(out: Path = Path("demo-out"), model: str = "efficientnet_lite0", port: int | None = None,
             serve: bool = True, log=print) -> dict:
    import numpy as np

    from export.archive import write_archives
    from export.onnx_export import export_run
    from zoo.advisor import advise
    from zoo.data.folder import load_image_folder
    from zoo.data.samples import write_sample
    from zoo.edge import EdgeModel
    from zoo.training.finetune import finetune

    timings: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str):
        timings[name] = time.perf_counter() - step.t
        step.t = time.perf_counter()
    step.t = started

    out = Path(out)
    data_dir, run_dir, export_dir, store = out / "textures", out / "run", out / "export", out / "model_store"
    log("1/7 sample dataset: textures (scikit-image's natural textures)")
    write_sample("textures", data_dir, seed=0, force=True)
    step("sample")

    log("2/7 advise: measure size and similarity")
    advice = advise(data_dir, model=model)
    log(f"    {advice.quadrant} -> strategy {advice.strategy} (similarity {advice.similarity:.2f}, {advice.images} images)")
    step("advise")

    log(f"3/7 finetune --strategy {advice.strategy}")
    metrics = finetune(data_dir, model=model, strategy=advice.strategy, out=run_dir, force=True,
                       **({"layer": advice.layer} if advice.layer else {}))
    step("finetune")

    log("4/7 export: ONNX (+ int8 where the accuracy gate allows) and TorchServe archives")
    try:
        report = export_run(run_dir, export_dir, quantize="int8", force=True, log=lambda m: log(f"    {m}"))
    except ZooError as e:  # the gate refused int8: keep the verified fp32 export
        log(f"    int8 refused: {e}")
        report = export_run(run_dir, export_dir, quantize="none", force=True)
    mars = write_archives(export_dir, "textures", store)
    step("export")

    data = load_image_folder(data_dir)
    val = data.val
    log("5/7 edge: ONNX Runtime alone on the val split")
    edge = EdgeModel(export_dir)
    t0 = time.perf_counter()
    results = edge.predict([s.path for s in val], top_k=1)
    edge_s = (time.perf_counter() - t0) / len(val)
    edge_acc = float(np.mean([r.label == data.classes[s.label] for r, s in zip(results, val)]))
    step("edge")

    served = {}
    if serve:
        from zoo import serve as serve_mod
        from zoo.serve_client import ServeClient

        port = port or serve_mod.free_port_block()
        log(f"6/7 serve: TorchServe on 127.0.0.1:{port}, HTTP predictions on images of different sizes")
        cfg = serve_mod.ServeConfig(model_store=store, models=("textures",), port=port)
        info = serve_mod.start(cfg)
        try:
            client = ServeClient(f"{info.inference_url}/predictions/textures")
            agree, max_dp, lat = 0, 0.0, []
            variants = [(s, name, blob) for s in val[:: max(1, len(val) // 6)][:6] for name, blob in _resized_variants(s.path)]
            for sample, name, blob in variants:
                t0 = time.perf_counter()
                answer = client.classify(blob, topk=len(data.classes))
                lat.append(time.perf_counter() - t0)
                local = edge.predict([blob], top_k=len(data.classes))[0].top_k
                agree += next(iter(answer)) == next(iter(local))
                max_dp = max(max_dp, max(abs(answer[k] - local[k]) for k in local))
            served = {"requests": len(variants), "top1_agreement": agree / len(variants), "max_abs_dp": max_dp,
                      "p50_ms": 1000 * float(np.median(lat)), "sizes": sorted({n for _, n, _ in variants})}
        finally:
            serve_mod.stop(cfg.folder)
            log("7/7 server stopped")
    step("serve")

    summary = {
        "strategy": advice.strategy, "quadrant": advice.quadrant, "similarity": advice.similarity,
        "val_accuracy_torch": metrics.get("accuracy"), "val_accuracy_onnx": edge_acc,
        "parity_max_abs_logits": report["parity"]["max_abs_logits"],
        "int8": report.get("variants", {}).get("int8"),
        "edge_ms_per_image": 1000 * edge_s, "served": served,
        "artifacts": {"run": str(run_dir), "export": str(export_dir), "archives": [str(m) for m in mars]},
        "timings_s": timings, "total_s": time.perf_counter() - started,
    }
    return summary


def summary_table(s: dict):
    from rich.table import Table

    t = Table(title="zoo demo: textures sample, end to end")
    t.add_column("what")
    t.add_column("figure")
    t.add_row("advisor", f"{s['quadrant']} -> {s['strategy']} (similarity {s['similarity']:.2f})")
    t.add_row("val accuracy (PyTorch, metrics.json)", f"{s['val_accuracy_torch']:.2%}")
    t.add_row("val accuracy (ONNX Runtime alone)", f"{s['val_accuracy_onnx']:.2%}")
    t.add_row("export parity max |Δ logits|", f"{s['parity_max_abs_logits']:.1e}")
    if s["int8"]:
        v = s["int8"]
        t.add_row("int8", f"{v['status']}: accuracy {v['val_accuracy']:.2%}, {v['speed_ratio']:.2f}x fp32 speed")
    t.add_row("edge latency", f"{s['edge_ms_per_image']:.1f} ms / image")
    if s["served"]:
        sv = s["served"]
        t.add_row("served vs edge", f"top-1 agreement {sv['top1_agreement']:.0%}, max |Δp| {sv['max_abs_dp']:.1e} "
                  f"over {sv['requests']} requests ({', '.join(sv['sizes'])})")
        t.add_row("served latency p50", f"{sv['p50_ms']:.1f} ms ({sv['p50_ms'] / s['edge_ms_per_image']:.1f}x edge)")
    for k, v in s["artifacts"].items():
        t.add_row(k, ", ".join(v) if isinstance(v, list) else v)
    t.add_row("wall time", f"{s['total_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in s["timings_s"].items()) + ")")
    return t
