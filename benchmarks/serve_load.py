"""Served lite0 classifier under load, beside in-process ONNX Runtime, measured in one run.

    python benchmarks/serve_load.py [--export EXPORT_DIR] [--requests 160] [--concurrency 8]
                                    [--workers 1,2] [--batch-size 1] [--rounds 3] [--no-kill]

Without --export it builds a lite0 run (pretrained backbone, new 3-class head: speed does not
depend on the head's weights) and exports it with `zoo.export.onnx_export.export_run`. Every request
carries one JPEG of a different size and aspect ratio (six real photos from scikit-image, 300 to
1000 pixels a side), so the server sees mixed shapes.

In-process means the same images in this process: zoo.preprocess plus an ONNX Runtime session, as
an application embedding the model would do, with one caller (ORT's default threads) and with two
callers of one thread each; the better of the two is the baseline. Served means HTTP to TorchServe
(`zoo serve`) from `--concurrency` client threads, with 1 and 2 workers per model (one server
each, both started before measuring). Rounds interleave the engines so that load from other
processes falls on all of them alike; each figure is the median over rounds. Target: served
throughput at concurrency 8 at least 50% of the best in-process figure, and no failed request.

Worker kill (unless --no-kill): each server then takes the same load once more while one of its
workers is killed (SIGKILL) after a quarter of the requests; the row beside the clean run gives
the failed requests and the recovery time, from the kill until TorchServe reports every worker
READY again. Failed requests there are reported, not held against the target.
"""
from __future__ import annotations

import argparse
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
from zoo.inference import CPU, open_session
from zoo.preprocess import PreprocessConfig, preprocess


def build_export(tmp: Path) -> Path:
    import torch

    from zoo.atomic import atomic_write_json
    from zoo.backbones import create_model, get_spec
    from zoo.export.onnx_export import export_run
    from zoo.run_dir import mark_complete, save_weights

    torch.manual_seed(0)
    run = tmp / "run"
    run.mkdir()
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    atomic_write_json(run / "config.json", {"model": "efficientnet_lite0", "num_classes": 3, "layer": None,
                                            "preprocess": get_spec("efficientnet_lite0").preprocess_config().to_json(),
                                            "strategy": "head"})
    atomic_write_json(run / "labels.json", ["brick", "grass", "gravel"])
    save_weights(model, run / "model.safetensors")
    mark_complete(run)
    export_run(run, tmp / "export")
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


def in_process(export_dir: Path, images: list[bytes], n: int, callers: int) -> dict:
    """`callers` threads share one session (ONNX Runtime releases the GIL while it runs); with more than
    one caller each run gets one intra-op thread, like one worker per core."""
    cfg = PreprocessConfig.load(export_dir / "preprocess.json")
    session = open_session(export_dir / "classifier.onnx", [CPU], threads=1 if callers > 1 else 0)
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
    return _summary(n, time.perf_counter() - start, latencies, failed=0)


def served(info: serve.ServerInfo, model: str, images: list[bytes], n: int, concurrency: int,
           quarter: threading.Event | None = None) -> dict:
    """`n` requests from `concurrency` client threads; `quarter` is set once a quarter of them are answered."""
    url = f"{info.inference_url}/predictions/{model}"
    headers = {"Authorization": f"Bearer {serve.read_key(info.key_file)}", "Content-Type": "application/octet-stream"}
    local = threading.local()
    counter = iter(range(n))
    lock = threading.Lock()
    latencies, failures = [], []

    def client() -> None:
        local.session = requests.Session()
        local.session.trust_env = False
        while True:
            i = _take(counter, lock)
            if i is None:
                return
            t = time.perf_counter()
            try:
                r = local.session.post(url, data=images[i % len(images)], headers=headers, timeout=120)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                (latencies if ok else failures).append(time.perf_counter() - t)
                if quarter is not None and len(latencies) + len(failures) >= n // 4:
                    quarter.set()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    return _summary(n, time.perf_counter() - start, latencies, failed=len(failures))


def _workers(info: serve.ServerInfo) -> list[int]:
    """PIDs of the server's Python workers (TorchServe's frontend is their process group leader)."""
    from zoo.serve.process_group import live_group_members

    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    return [pid for pid in live_group_members(info.pid) if b"model_service_worker" in cmdline(pid)]


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
        victim = _workers(info)[0]
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


def _summary(n: int, seconds: float, latencies: list[float], failed: int) -> dict:
    ms = sorted(1000 * t for t in latencies) or [float("nan")]
    return {"throughput": n / seconds, "p50": ms[len(ms) // 2], "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, help="An export folder (classifier.onnx, preprocess.json, labels.json).")
    ap.add_argument("--requests", type=int, default=160, help="Requests per measurement.")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="Comma-separated worker counts, one server each.")
    ap.add_argument("--batch-size", type=int, default=1, help="TorchServe batch size (1: batching off).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True,
                    help="Also run the load once per server while one worker is SIGKILLed.")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zoo-serve-load-"))
    os.environ.setdefault("ZOO_SERVE_HOME", str(tmp / "serve-home"))
    export_dir = args.export or build_export(tmp)
    store = tmp / "model_store"
    from zoo.export.archive import write_archives

    write_archives(export_dir, "lite0", store)
    images = mixed_images()
    cfg = PreprocessConfig.load(export_dir / "preprocess.json")
    shapes = sorted({preprocess(b, cfg).shape[1:] for b in images})
    print(f"images: {len(images)} JPEGs, model input shapes {', '.join(f'{h}x{w}' for h, w in shapes)}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    servers: dict[int, serve.ServeConfig] = {}
    results: dict[str, list[dict]] = {}
    try:
        for w in (int(x) for x in args.workers.split(",")):
            port = serve.free_port_block(23000, step=211)
            cfg_w = serve.ServeConfig(model_store=store, models=("lite0",), port=port, workers=w,
                                      batch_size=args.batch_size, max_batch_delay_ms=5)
            servers[w] = cfg_w
            serve.start(cfg_w, timeout_s=600)
            print(f"started {w} worker(s) on port {cfg_w.port}", flush=True)
        infos = {w: serve.running_server(c.folder) for w, c in servers.items()}
        for info in infos.values():  # warm-up: every worker sees every shape once
            served(info, "lite0", images, 4 * len(images), args.concurrency)
        inproc = {1: "in-process ORT, 1 caller", 2: "in-process ORT, 2 callers x 1 thread"}
        for r in range(args.rounds):
            for callers, label in inproc.items():
                results.setdefault(label, []).append(in_process(export_dir, images, args.requests, callers))
            for w, info in infos.items():
                label = f"served, {w} worker{'s' if w > 1 else ''}, c={args.concurrency}"
                results.setdefault(label, []).append(served(info, "lite0", images, args.requests, args.concurrency))
            print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
        if args.kill:
            for w, info in infos.items():
                label = f"served, {w} worker{'s' if w > 1 else ''}, c={args.concurrency}, 1 killed"
                results[label] = [served_with_kill(info, "lite0", images, args.requests, args.concurrency, w)]
    finally:
        for c in servers.values():
            serve.stop(c.folder)
        shutil.rmtree(tmp, ignore_errors=True)

    sys.exit(0 if report(results, args.concurrency) else 1)


def report(results: dict[str, list[dict]], concurrency: int) -> bool:
    """Print the median of each engine over the rounds, worker-kill runs beside their clean run; True when the
    target is met (clean runs only: a killed worker's requests are expected to fail)."""
    medians = {label: {k: statistics.median(x[k] for x in runs) for k in ("throughput", "p50", "p99")}
               | {"failed": sum(x["failed"] for x in runs), "recovery_s": runs[0].get("recovery_s")}
               for label, runs in results.items()}
    base = max(m["throughput"] for label, m in medians.items() if label.startswith("in-process"))
    print(f"\n{'engine':48} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'recovery s':>11} "
          f"{'vs best in-process':>19}")
    for label in sorted(medians, key=lambda k: (not k.startswith("in-process"), k)):
        m = medians[label]
        recovery = "-" if m["recovery_s"] is None else f"{m['recovery_s']:.1f}"
        print(f"{label:48} {m['throughput']:9.1f} {m['p50']:8.1f} {m['p99']:8.1f} {m['failed']:7d} {recovery:>11} "
              f"{m['throughput'] / base:18.2f}x")
    clean = {label: m for label, m in medians.items() if not label.endswith("killed")}
    best = max((m for label, m in clean.items() if label.startswith("served")), key=lambda m: m["throughput"])
    ok = best["throughput"] / base >= 0.5 and all(m["failed"] == 0 for m in clean.values())
    print(f"\ntarget (best served config at c={concurrency} >= 0.50x the best in-process, 0 failed): "
          f"{'met' if ok else 'NOT met'} ({best['throughput'] / base:.2f}x)")
    return ok


if __name__ == "__main__":
    main()
