"""`zoo serve status`: a running server's record plus each model's workers, and the lines people read."""
from __future__ import annotations

import json
from pathlib import Path

from zoo.serve.config import KSERVE
from zoo.serve.keys import read_key, request
from zoo.serve.process_group import is_alive
from zoo.serve.state import is_front_door, running_server


def status(state_dir: Path) -> dict | None:
    """None when no server runs from state_dir; else server.json plus each model's worker states (TorchServe)
    or readiness (the KServe engine)."""
    info = running_server(Path(state_dir))
    if info is None:
        return None
    if info.engine == KSERVE:
        ready = {}
        for name in info.models:
            code, _ = request(f"{info.inference_url}/v2/models/{name}/ready")
            ready[name] = {"status": "READY" if code == 200 else f"not ready (HTTP {code})" if code else "no answer"}
        return {**info.to_json(), "model_status": ready}
    key = read_key(info.key_file, "management") if info.key_file and Path(info.key_file).is_file() else None
    models: dict[str, dict] = {}
    for name in info.models:
        code, body = request(f"{info.management_url}/models/{name}", key=key)
        if code != 200:
            models[name] = {"status": f"no answer (HTTP {code})" if code else "no answer"}
            continue
        described = json.loads(body)[0]
        workers = described.get("workers", [])
        models[name] = {"version": described.get("modelVersion"), "batch_size": described.get("batchSize"),
                        "max_batch_delay_ms": described.get("maxBatchDelay"),
                        "workers": [w.get("status") for w in workers]}
    front = {}
    if info.front_pid:  # the inference port is the front door's: without it no prediction gets through
        alive = is_alive(info.front_pid) and is_front_door(info.front_pid, Path(state_dir))
        front = {"front_door": "running" if alive else "not running: restart the server (zoo serve stop, then start)"}
    return {**info.to_json(), "model_status": models, **front}


def describe(info: dict) -> str:
    """Human lines for `zoo serve start|status`."""
    if info.get("engine") == KSERVE:
        return _describe_kserve(info)
    lines = [f"TorchServe (pid {info['pid']}) serves from {info['model_store']}:"]
    statuses = info.get("model_status", {})
    for name in info["models"]:
        state = statuses.get(name)
        if state and "workers" in state:
            workers = ", ".join(state.get("workers", []))
        else:
            workers = (state or {}).get("status", "")
        lines.append(f"  {info['inference_url']}/predictions/{name}" + (f"  workers: {workers}" if workers else ""))
    if info.get("front_door", "running") != "running":
        lines.append(f"zoo's front door (pid {info['front_pid']}) on {info['inference_url']} is {info['front_door']}")
    elif info.get("front_pid"):
        lines.append(f"zoo's front door (pid {info['front_pid']}) answers on {info['inference_url']}: it refuses "
                     "bodies over the limit with a message and reads a urlencoded body as the image (TorchServe's own "
                     "inference API listens on 127.0.0.1, five ports up)")
    lines.append(f"management {info['management_url']}, metrics {info['metrics_url']}; "
                 f"{info['workers']} worker(s) per model, batch size {info['batch_size']}, "
                 f"max batch delay {info['max_batch_delay_ms']} ms")
    if info.get("key_file"):
        lines.append(f"token authorization on: keys in {info['key_file']} "
                     f"(send 'Authorization: Bearer <inference key>'; `zoo predict --server` reads it)")
    else:
        lines.append("token authorization OFF: anyone who reaches these addresses can use the APIs")
    lines.append(f"logs in {info['log_dir']}")
    return "\n".join(lines)


def _describe_kserve(info: dict) -> str:
    url, statuses = info["inference_url"], info.get("model_status", {})
    lines = [f"The KServe engine (pid {info['pid']}, ONNX Runtime, no TorchServe or Java) serves "
             f"{info['model_store']}:"]
    for name in info["models"]:
        state = (statuses.get(name) or {}).get("status", "")
        lines.append(f"  {url}/v2/models/{name}/infer  (raw image bytes: {url}/predictions/{name})"
                     + (f"  {state}" if state else ""))
    lines.append(f"health {url}/v2/health/ready, metrics {info['metrics_url']}; {info['workers']} inference(s) at "
                 f"once, {info.get('threads') or 'auto'} ONNX Runtime thread(s) each")
    lines.append(f"no token authorization: bound to {url.split('//', 1)[1].rsplit(':', 1)[0]}; anything wider belongs "
                 "behind an ingress or proxy that authenticates")
    lines.append(f"logs in {info['log_dir']}")
    return "\n".join(lines)
