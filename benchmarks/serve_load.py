"""Served lite0 classifier under load, fp32 and the deployed int8 side by side, beside in-process ONNX Runtime;
TorchServe and zoo's KServe engine side by side on the same export.

    python benchmarks/serve_load.py [--export EXPORT_DIR] [--requests 160] [--concurrency 8]
                                    [--workers 1,2] [--batch-size 1] [--rounds 3] [--variants fp32,int8]
                                    [--engines torchserve,kserve] [--no-kill]

Without --export it builds a lite0 run (pretrained backbone, new 3-class head: speed does not
depend on the head's weights) on the textures sample and exports it with
`zoo.export.onnx_export.export_run`, `--quantize int8 --deploy int8` (the accuracy gate opened
wide: speed is measured here, accuracy in the export report). Each variant gets its own archive of
the same export (lite0-fp32, lite0-int8), served by the same server with the same workers; every
answer's X-Zoo-Variant header is checked, so a row is only credited to the variant that really
answered. Every request carries one JPEG of a different size and aspect ratio (six real photos from
scikit-image, 300 to 1000 pixels a side), so the server sees mixed shapes.

In-process means the same images in this process: zoo.preprocess plus an ONNX Runtime session, as
an application embedding the model would do, with one caller (ORT's default threads) and with two
callers of one thread each; the better of the two is the baseline. Served means HTTP to TorchServe
(`zoo serve`) from `--concurrency` client threads, with 1 and 2 workers per model (one server
each, both started before measuring). Rounds interleave the engines so that load from other
processes falls on all of them alike; each figure is the median over rounds. Targets, with no
failed request: served throughput at concurrency 8 at least 50% of the best in-process figure of
the same variant, and served int8 at least 1.5x served fp32 (best worker count of each). Served
requests go through zoo's front door on the inference port, as every client's do; each TorchServe
also takes the same load on its own inference API behind it (PORT+5, "direct"), and a table puts
the two side by side: what the front door costs.

The KServe engine (`zoo serve start --engine kserve`, no Java) serves the same export, one engine per
variant and worker count (`--workers` there is inferences at once, each with the CPU count divided
by the workers as ONNX Runtime threads, as TorchServe's workers get), and takes the same load in
the same rounds, each image sent the way `zoo predict --server .../v2/models/NAME` sends it (the
Open Inference Protocol's binary tensor data); TorchServe gets the raw bytes with its token. The
last table puts the two engines side by side per variant and worker count: throughput, p50, p99
and failed requests at the same concurrency. Its rows must have no failed request and be answered
by their own variant; the targets above stay TorchServe's.

Worker kill (unless --no-kill): each server then takes the same load once more per variant while
one of its workers is killed (SIGKILL) after a quarter of the requests; the row beside the clean
run gives the failed requests and the recovery time, from the kill until TorchServe reports every
worker READY again. Failed requests there are reported, not held against the targets.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from zoo import serve
from zoo.deployment import variant_file
from zoo.inference import CPU, open_session
from zoo.preprocess import PreprocessConfig, preprocess
from zoo.serve import v2
from zoo.serve.client import VARIANT_HEADER


def build_export(tmp: Path) -> Path:
    import torch

    from zoo.atomic import atomic_write_json
    from zoo.backbones import create_model, get_spec
    from zoo.data.samples import write_sample
    from zoo.export.onnx_export import export_run
    from zoo.run_dir import mark_complete, save_weights

    torch.manual_seed(0)
    run = tmp / "run"
    run.mkdir()
    write_sample("textures", tmp / "data", seed=0, limit=60)  # int8 calibrates on training images
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    atomic_write_json(run / "config.json", {"model": "efficientnet_lite0", "num_classes": 3, "layer": None,
                                            "preprocess": get_spec("efficientnet_lite0").preprocess_config().to_json(),
                                            "strategy": "head", "data": {"dir": str(tmp / "data")}})
    atomic_write_json(run / "labels.json", ["brick", "grass", "gravel"])
    save_weights(model, run / "model.safetensors")
    mark_complete(run)
    export_run(run, tmp / "export", quantize="int8", deploy="int8", max_accuracy_drop=100.0)
    return tmp / "export"


def mixed_images() -> list[bytes]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.rocket(), data.chelsea(), data.hubble_deep_field(),
              np.ascontiguousarray(np.rot90(data.chelsea()))]  # 512², 600x400, 640x427, 451x300, 1000x872, 300x451
    out = []
    for arr in photos:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _take(counter, lock: threading.Lock):
    """The next request index shared by the load threads, or None when all are sent."""
    with lock:
        return next(counter, None)


def in_process(export_dir: Path, images: list[bytes], n: int, callers: int, variant: str = "fp32") -> dict:
    """`callers` threads share one session (ONNX Runtime releases the GIL while it runs); with more than
    one caller each run gets one intra-op thread, like one worker per core."""
    cfg = PreprocessConfig.load(export_dir / "preprocess.json")
    session = open_session(export_dir / variant_file("classifier", variant), [CPU], threads=1 if callers > 1 else 0)
    for data in images:  # warm-up: every shape once
        session.run(["probabilities"], {"image": preprocess(data, cfg)[None]})
    counter = iter(range(n))
    lock = threading.Lock()
    latencies = []

    def caller() -> None:
        while True:
            i = _take(counter, lock)
            if i is None:
                return
            t = time.perf_counter()
            probs = session.run(["probabilities"], {"image": preprocess(images[i % len(images)], cfg)[None]})[0][0]
            np.argsort(-probs)[:3]
            with lock:
                latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        for _ in range(callers):
            pool.submit(caller)
    return _summary(n, time.perf_counter() - start, latencies, failed=0, variants={variant})


def _requests_for(info: serve.ServerInfo, model: str, images: list[bytes]) -> tuple[str, list[tuple[bytes, dict]]]:
    """(URL, (body, headers) per image) in each engine's own protocol: raw bytes with the token for TorchServe,
    the Open Inference Protocol's binary tensor data for the KServe engine."""
    if info.engine == serve.KSERVE:
        return f"{info.inference_url}/v2/models/{model}/infer", [v2.encode_images([data]) for data in images]
    headers = {"Authorization": f"Bearer {serve.read_key(info.key_file)}", "Content-Type": "application/octet-stream"}
    return f"{info.inference_url}/predictions/{model}", [(data, headers) for data in images]


def served(info: serve.ServerInfo, model: str, images: list[bytes], n: int, concurrency: int,
           quarter: threading.Event | None = None) -> dict:
    """`n` requests from `concurrency` client threads; `quarter` is set once a quarter of them are answered."""
    url, bodies = _requests_for(info, model, images)
    local = threading.local()
    counter = iter(range(n))
    lock = threading.Lock()
    latencies, failures = [], []
    seen: set[str] = set()  # X-Zoo-Variant of the answers: which variant really ran

    def client() -> None:
        local.session = requests.Session()
        local.session.trust_env = False
        while True:
            i = _take(counter, lock)
            if i is None:
                return
            t = time.perf_counter()
            body, headers = bodies[i % len(bodies)]
            try:
                r = local.session.post(url, data=body, headers=headers, timeout=120)
                ok = r.status_code == 200
            except requests.RequestException:
                ok, r = False, None
            with lock:
                (latencies if ok else failures).append(time.perf_counter() - t)
                if r is not None:
                    seen.add(r.headers.get(VARIANT_HEADER, "unnamed"))
                if quarter is not None and len(latencies) + len(failures) >= n // 4:
                    quarter.set()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    return _summary(n, time.perf_counter() - start, latencies, failed=len(failures), variants=seen)


def _workers(info: serve.ServerInfo) -> list[int]:
    """PIDs of the server's Python workers (TorchServe's frontend is their process group leader)."""
    from zoo.serve.process_group import live_group_members

    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    return [pid for pid in live_group_members(info.pid) if b"model_service_worker" in cmdline(pid)]


def _model_workers(info: serve.ServerInfo, model: str) -> list[int]:
    """PIDs TorchServe's management API gives for the workers of `model` (a server holds one model per variant)."""
    import json

    from zoo.serve.keys import read_key, request

    code, body = request(f"{info.management_url}/models/{model}", key=read_key(info.key_file, "management"))
    return [int(w["pid"]) for w in json.loads(body)[0].get("workers", []) if w.get("pid")] if code == 200 else []


def _all_ready(info: serve.ServerInfo, model: str, workers: int) -> bool:
    try:
        states = (serve.status(Path(info.state_dir)) or {})["model_status"][model]["workers"]
    except (KeyError, TypeError, requests.RequestException):
        return False
    return len(states) == workers and all(s == "READY" for s in states)


def served_with_kill(info: serve.ServerInfo, model: str, images: list[bytes], n: int, concurrency: int,
                     workers: int) -> dict:
    """The same load, with one worker SIGKILLed after a quarter of it: failures and seconds to recover."""
    killed: dict[str, float] = {}
    quarter = threading.Event()

    def killer() -> None:
        quarter.wait()
        live = _workers(info)
        victim = next((pid for pid in _model_workers(info, model) if pid in live), live[0])  # one of this model's
        os.kill(victim, signal.SIGKILL)
        killed["at"] = time.perf_counter()
        while time.perf_counter() - killed["at"] < 120:
            time.sleep(0.2)
            if victim not in _workers(info) and _all_ready(info, model, workers):
                killed["recovery_s"] = time.perf_counter() - killed["at"]
                return

    thread = threading.Thread(target=killer)
    thread.start()
    result = served(info, model, images, n, concurrency, quarter)
    thread.join()
    return {**result, "recovery_s": killed.get("recovery_s", float("nan"))}


def _summary(n: int, seconds: float, latencies: list[float], failed: int, variants: set[str]) -> dict:
    ms = sorted(1000 * t for t in latencies) or [float("nan")]
    return {"throughput": n / seconds, "p50": ms[len(ms) // 2], "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "failed": failed, "variants": set(variants)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, help="An export folder (classifier.onnx, preprocess.json, labels.json; "
                                                "classifier.int8.onnx for the int8 rows).")
    ap.add_argument("--requests", type=int, default=160, help="Requests per measurement.")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="Comma-separated worker counts, one server each.")
    ap.add_argument("--batch-size", type=int, default=1, help="TorchServe batch size (1: batching off).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="fp32,int8", help="Comma-separated variants, one archive each.")
    ap.add_argument("--engines", default="torchserve,kserve",
                    help="Comma-separated: torchserve (zoo serve start), kserve (zoo serve start --engine kserve).")
    ap.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True,
                    help="Also run the load once per server while one worker is SIGKILLed.")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zoo-serve-load-"))
    os.environ.setdefault("ZOO_SERVE_HOME", str(tmp / "serve-home"))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        export_dir = args.export or build_export(tmp)
        results = measure(export_dir, tmp, variants, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    workers = [int(x) for x in args.workers.split(",")]
    sys.exit(0 if report(results, args.concurrency, variants, workers) else 1)


def start_servers(store: Path, export_dir: Path, models: dict[str, str], args: argparse.Namespace,
                  stops: list[Path]) -> tuple[dict[int, serve.ServerInfo], dict[tuple[str, int], serve.ServerInfo]]:
    """TorchServe per worker count (every variant's archive), the KServe engine per variant and worker count;
    each state folder goes into `stops` as soon as its server starts."""
    engines = {e.strip() for e in args.engines.split(",")}
    workers = [int(x) for x in args.workers.split(",")]
    torchserve: dict[int, serve.ServerInfo] = {}
    kserve: dict[tuple[str, int], serve.ServerInfo] = {}
    for w in workers if serve.TORCHSERVE in engines else []:
        port = serve.free_port_block(23000, step=211)
        cfg = serve.ServeConfig(model_store=store, models=tuple(models.values()), port=port, workers=w,
                                batch_size=args.batch_size, max_batch_delay_ms=5)
        stops.append(cfg.folder)
        torchserve[w] = serve.start(cfg, timeout_s=600)
        print(f"started TorchServe, {w} worker(s) per variant, on port {port}", flush=True)
    for v, name in models.items() if serve.KSERVE in engines else []:
        for w in workers:
            port = serve.free_port_block(24000, count=1, step=223)
            kcfg = serve.KServeConfig(export_dir=export_dir, name=name, variant=v, port=port, workers=w,
                                      features=False)
            stops.append(kcfg.folder)
            kserve[(v, w)] = serve.start_kserve(kcfg, timeout_s=600)
            print(f"started the KServe engine, {v}, {w} at once, on port {port}", flush=True)
    return torchserve, kserve


def measure(export_dir: Path, tmp: Path, variants: list[str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every engine, round after round: in-process per variant, then each server's archive (TorchServe) and each
    KServe engine per variant."""
    from zoo.export.archive import write_archives

    store = tmp / "model_store"
    models = {v: f"lite0-{v}" for v in variants}
    for v, name in models.items():
        write_archives(export_dir, name, store, variant=v)  # one export; the archive names the variant's file
    images = mixed_images()
    cfg = PreprocessConfig.load(export_dir / "preprocess.json")
    shapes = sorted({preprocess(b, cfg).shape[1:] for b in images})
    print(f"images: {len(images)} JPEGs, model input shapes {', '.join(f'{h}x{w}' for h, w in shapes)}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    stops: list[Path] = []
    results: dict[str, list[dict]] = {}
    c = args.concurrency
    try:
        infos, engines = start_servers(store, export_dir, models, args, stops)
        for info in infos.values():  # warm-up: every worker sees every shape once
            for name in models.values():
                served(info, name, images, 4 * len(images), c)
        for (v, _), info in engines.items():
            served(info, models[v], images, 4 * len(images), c)
        for r in range(args.rounds):
            for v, name in models.items():
                for callers in (1, 2):
                    label = f"{v} in-process ORT, " + ("1 caller" if callers == 1 else "2 callers x 1 thread")
                    results.setdefault(label, []).append(in_process(export_dir, images, args.requests, callers, v))
                for w, info in infos.items():
                    label = served_label(serve.TORCHSERVE, v, w, c)
                    results.setdefault(label, []).append(served(info, name, images, args.requests, c))
                    label = direct_label(v, w, c)  # the same server past its front door: what the front door costs
                    results.setdefault(label, []).append(served(direct(info), name, images, args.requests, c))
                for (ev, w), info in engines.items():
                    if ev == v:
                        label = served_label(serve.KSERVE, v, w, c)
                        results.setdefault(label, []).append(served(info, name, images, args.requests, c))
            print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
        if args.kill:  # TorchServe's workers; the KServe engine is one process, with nothing to kill but itself
            for v, name in models.items():
                for w, info in infos.items():
                    label = served_label(serve.TORCHSERVE, v, w, c) + ", 1 killed"
                    results[label] = [served_with_kill(info, name, images, args.requests, c, w)]
    finally:
        for folder in stops:
            serve.stop(folder)
    return results


def direct(info: serve.ServerInfo) -> serve.ServerInfo:
    """The same TorchServe, addressed on its own inference API (127.0.0.1, PORT+5) instead of zoo's front door."""
    port = int(info.inference_url.rsplit(":", 1)[1])
    return dataclasses.replace(info, inference_url=f"http://127.0.0.1:{port + 5}")


def direct_label(variant: str, workers: int, concurrency: int) -> str:
    return f"{variant} TorchServe direct, no front door, {workers} worker{'s' if workers > 1 else ''}, c={concurrency}"


def served_label(engine: str, variant: str, workers: int, concurrency: int) -> str:
    if engine == serve.KSERVE:
        return f"{variant} kserve, {workers} at once, c={concurrency}"
    return f"{variant} served, {workers} worker{'s' if workers > 1 else ''}, c={concurrency}"


def side_by_side(title: str, names: tuple[str, str], pairs: list[tuple[str, int, dict | None, dict | None]]) -> None:
    """Two ways of serving per variant and worker count (median over rounds), and the second's throughput as a
    multiple of the first's."""
    if not any(a and b for _, _, a, b in pairs):
        return
    first, second = names
    print(f"\n{title}:")
    print(f"{'variant':8} {'workers':>7} | {first + ' images/s':>22} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} | "
          f"{second + ' images/s':>22} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} | {second + '/' + first:>24}")
    for v, w, a, b in pairs:
        if a and b:
            print(f"{v:8} {w:>7} | {a['throughput']:22.1f} {a['p50']:7.0f} {a['p99']:7.0f} {a['failed']:6d} | "
                  f"{b['throughput']:22.1f} {b['p50']:7.0f} {b['p99']:7.0f} {b['failed']:6d} | "
                  f"{b['throughput'] / a['throughput']:23.2f}x")


def compare_engines(medians: dict[str, dict], variants: list[str], workers: list[int], concurrency: int) -> None:
    """TorchServe and the KServe engine side by side; then each TorchServe addressed directly beside the same
    server through zoo's front door (what clients get)."""
    def row(label: str) -> dict | None:
        return medians.get(label)

    side_by_side(f"TorchServe and the KServe engine side by side, same export and images, c={concurrency}",
                 ("TorchServe", "KServe"),
                 [(v, w, row(served_label(serve.TORCHSERVE, v, w, concurrency)),
                   row(served_label(serve.KSERVE, v, w, concurrency))) for v in variants for w in workers])
    side_by_side(f"zoo's front door: the same TorchServe past it (direct) and through it, c={concurrency}",
                 ("direct", "front door"),
                 [(v, w, row(direct_label(v, w, concurrency)), row(served_label(serve.TORCHSERVE, v, w, concurrency)))
                  for v in variants for w in workers])


def report(results: dict[str, list[dict]], concurrency: int, variants: list[str], workers: list[int]) -> bool:
    """Print the median of each engine over the rounds, the variants side by side and worker-kill runs beside their
    clean run; True when the targets are met (clean runs only: a killed worker's requests are expected to fail)."""
    medians = {label: {k: statistics.median(x[k] for x in runs) for k in ("throughput", "p50", "p99")}
               | {"failed": sum(x["failed"] for x in runs), "ran": set().union(*(x["variants"] for x in runs)),
                  "recovery_s": runs[0].get("recovery_s")}
               for label, runs in results.items()}
    print(f"\n{'engine':56} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'answered by':>12} "
          f"{'recovery s':>11} {'vs in-process':>14}")
    ok = True
    best_served: dict[str, dict] = {}
    for v in variants:
        rows = {label: m for label, m in medians.items() if label.startswith(f"{v} ")}
        base = max(m["throughput"] for label, m in rows.items() if "in-process" in label)
        for label, m in sorted(rows.items()):
            recovery = "-" if m["recovery_s"] is None else f"{m['recovery_s']:.1f}"
            print(f"{label:56} {m['throughput']:9.1f} {m['p50']:8.1f} {m['p99']:8.1f} {m['failed']:7d} "
                  f"{','.join(sorted(m['ran'])):>12} {recovery:>11} {m['throughput'] / base:13.2f}x")
            if not label.endswith("killed"):  # a row counts only for the variant that answered
                ok = ok and m["failed"] == 0 and m["ran"] == {v}
        torchserve = [m for label, m in rows.items() if " served, " in label and not label.endswith("killed")]
        if torchserve:  # the targets are TorchServe's; the KServe rows count for failures and variants above
            best_served[v] = max(torchserve, key=lambda m: m["throughput"])
            ok = ok and best_served[v]["throughput"] / base >= 0.5
    compare_engines(medians, variants, workers, concurrency)
    print(f"\nserved by TorchServe at c={concurrency}, best worker count of each: "
          + "; ".join(f"{v} {m['throughput']:.1f} images/s, p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms"
                      for v, m in best_served.items()))
    if "fp32" in best_served and "int8" in best_served:
        ratio = best_served["int8"]["throughput"] / best_served["fp32"]["throughput"]
        ok = ok and ratio >= 1.5
        print(f"served int8 / served fp32 throughput: {ratio:.2f}x (target 1.50x)")
    print(f"targets (0 failed, each answered by its own variant, served >= 0.50x in-process per variant, "
          f"int8 >= 1.50x fp32 served): {'met' if ok else 'NOT met'}")
    return ok


if __name__ == "__main__":
    main()
