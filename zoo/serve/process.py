"""Starting a server (TorchServe's Java frontend, run directly) and stopping it with all its workers."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from zoo.errors import UsageError, ZooError
from zoo.serve.archives import choose_models
from zoo.serve.config import LOOPBACK, ServeConfig, port_is_free, write_config
from zoo.serve.keys import KEY_FILE, read_key, request
from zoo.serve.log_config import write_log_config
from zoo.serve.process_group import is_alive, kill_group
from zoo.serve.state import (
    FRONT_DOOR,
    SERVER_CLASS,
    STATE_FILE,
    ServerInfo,
    is_front_door,
    is_our_server,
    load_state,
    running_server,
    save_state,
)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else None
    if java and java.is_file():
        return str(java)
    from shutil import which

    found = which("java")
    if not found:
        raise ZooError("TorchServe needs Java 11 or newer and none was found: install a JDK or set JAVA_HOME.")
    return found


def _ts_home() -> Path:
    try:
        import ts
    except ImportError:
        raise ZooError("TorchServe is not installed: `pip install torchserve torch-model-archiver`.") from None
    return Path(ts.__file__).resolve().parent.parent


def _log_tail(log_dir: Path, lines: int = 15) -> str:
    for name in ("model_log.log", "ts_log.log", "server.out"):
        path = log_dir / name
        if path.is_file() and path.stat().st_size:
            text = path.read_text(errors="replace").strip().splitlines()
            errors = [line for line in text if "ERROR" in line or "Error" in line or "Traceback" in line]
            return "\n".join((errors or text)[-lines:])
    return ""


def _check(cfg: ServeConfig) -> dict[str, str]:
    """The models to serve (name -> version), once the settings, the state folder and the ports allow a start."""
    if cfg.workers < 0 or cfg.batch_size < 1 or cfg.max_batch_delay_ms < 0:
        raise UsageError("--workers must be at least 0 (auto), --batch-size at least 1 and --max-batch-delay "
                         "at least 0.")
    if running_server(cfg.folder):
        raise ZooError(f"A zoo server already runs on port {cfg.port}: stop it with "
                       f"`zoo serve stop --port {cfg.port}`.")
    models = choose_models(cfg.model_store, cfg.models)
    busy = [f"{name} {port}" for name, port in cfg.ports.items()
            if not port_is_free(LOOPBACK if name == "torchserve" else cfg.host, port)]
    if busy:
        raise ZooError(f"Port(s) {', '.join(busy)} on {cfg.host} are in use: choose another --port "
                       f"(zoo uses it and the five after it).")
    return models


def _launch(cfg: ServeConfig, config: Path, log_dir: Path, env: dict[str, str] | None) -> subprocess.Popen:
    """The Java frontend in a session of its own, so that its workers share its process group."""
    ts_home = _ts_home()
    log_config = write_log_config(config.parent)
    # The serial collector and the client JIT: the frontend only moves bytes, and on 2 cores G1's and
    # C2's background threads cost it 2.4-3.3 ms of CPU per request instead of 1.3-1.6 (serve_load.py).
    cmd = [_java(), "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx2g", f"-Dmodel_server_home={ts_home}",
           f"-Dlog4j.configurationFile={log_config}", "-cp", f".:{ts_home / 'ts' / 'frontend'}/*",
           SERVER_CLASS, "--python", sys.executable, "-f", str(config), "-s", str(Path(cfg.model_store).resolve()),
           "-ncs"]
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.worker_count)
    server_env = {**os.environ, "LOG_LOCATION": str(log_dir), "METRICS_LOCATION": str(log_dir),
                  "ZOO_SERVE_THREADS": str(threads), **(env or {})}
    with open(log_dir / "server.out", "ab") as out:
        return subprocess.Popen(cmd, cwd=config.parent, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=server_env, start_new_session=True)


def _launch_front_door(cfg: ServeConfig, state_dir: Path, log_dir: Path) -> subprocess.Popen:
    """zoo.serve.front_door on the public inference port, in a session of its own. It runs with zoo's own
    environment (not the one given to TorchServe's workers): it is part of zoo, not of the archives."""
    ports = cfg.ports
    cmd = [sys.executable, "-m", FRONT_DOOR, "--listen", f"{cfg.host}:{ports['inference']}",
           "--upstream", f"http://{LOOPBACK}:{ports['torchserve']}", "--max-bytes", str(cfg.max_request_mb * 2**20),
           "--timeout", str(cfg.response_timeout_s + 30), "--state-dir", str(Path(state_dir).resolve())]
    with open(log_dir / "front_door.log", "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start(cfg: ServeConfig, timeout_s: float = 300.0, env: dict[str, str] | None = None) -> ServerInfo:
    """Start TorchServe and wait until every model answers a prediction; returns what server.json holds.

    env: extra environment for the server and its workers (tests use it to hide the zoo package).
    """
    models = _check(cfg)
    state_dir = cfg.folder
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)  # it will hold the keys
    log_dir = state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    for stale in (KEY_FILE, STATE_FILE):
        (state_dir / stale).unlink(missing_ok=True)
    proc = _launch(cfg, write_config(cfg, models, state_dir), log_dir, env)
    try:
        front = _launch_front_door(cfg, state_dir, log_dir)
    except BaseException:
        terminate(proc.pid, timeout_s=10.0)
        raise
    ports = cfg.ports
    info = ServerInfo(pid=proc.pid, state_dir=str(state_dir), model_store=str(Path(cfg.model_store).resolve()),
                      models=list(models), inference_url=f"http://{cfg.host}:{ports['inference']}",
                      management_url=f"http://{cfg.host}:{ports['management']}",
                      metrics_url=f"http://{cfg.host}:{ports['metrics']}",
                      key_file=str(state_dir / KEY_FILE) if cfg.token_auth else None, log_dir=str(log_dir),
                      workers=cfg.worker_count, batch_size=cfg.batch_size, max_batch_delay_ms=cfg.max_batch_delay_ms,
                      front_pid=front.pid)
    return record_and_wait(info, lambda: _wait_until_answering(info, proc, timeout_s, front))


def record_and_wait(info: ServerInfo, wait: Callable[[], None]) -> ServerInfo:
    """Save the server's state, then wait until it answers; one that never does is stopped (either engine)."""
    save_state(info)
    try:
        wait()
    except BaseException:
        stop(Path(info.state_dir))
        raise
    return info


def probe_image() -> bytes:
    """A small valid PNG: what `start` sends each model to see that it answers."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 160, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _wait_until_answering(info: ServerInfo, proc: subprocess.Popen, timeout_s: float,
                          front: subprocess.Popen | None = None) -> None:
    """Until every model answers a prediction through the public address (the front door, when there is one)."""
    deadline = time.monotonic() + timeout_s
    pending = list(info.models)
    probe = probe_image()
    log_dir = Path(info.log_dir)
    while pending:
        if proc.poll() is not None:
            raise ZooError(f"TorchServe exited with status {proc.returncode} while starting: see {log_dir}.\n"
                           + _log_tail(log_dir))
        if front is not None and front.poll() is not None:
            raise ZooError(f"zoo's front door for TorchServe exited with status {front.returncode} while starting: "
                           f"see {log_dir / 'front_door.log'}.")
        if time.monotonic() > deadline:
            raise ZooError(f"{', '.join(pending)} did not answer within {timeout_s:.0f} s: see {log_dir}.\n"
                           + _log_tail(log_dir))
        key = None
        if info.key_file:
            try:
                key = read_key(info.key_file, "inference", settle_s=0)
            except ZooError:  # not written yet, or half-written: TorchServe is still starting
                time.sleep(0.5)
                continue
        name = pending[0]
        status, _ = request(f"{info.inference_url}/predictions/{name}", "POST", key, probe, timeout=60)
        if status == 200:
            pending.pop(0)
        else:
            time.sleep(0.25)  # a worker that is still loading answers 503 at once: ask again soon


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (TorchServe stops its workers, aiohttp finishes the requests in flight), a wait of up to timeout_s,
    then SIGKILL whatever is left of the process group pid leads."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_alive(pid):
        time.sleep(0.1)
    kill_group(pid)


def stop(state_dir: Path, timeout_s: float = 60.0) -> ServerInfo | None:
    """Stop the server recorded in state_dir: SIGTERM (TorchServe stops its workers), then SIGKILL
    whatever is left of its process group. Returns None when no server was running."""
    state_dir = Path(state_dir)
    info = load_state(state_dir)
    if info is None:
        return None
    was_running = is_our_server(info.pid, state_dir)
    if was_running:
        terminate(info.pid, timeout_s)
    if info.front_pid and is_front_door(info.front_pid, state_dir):
        terminate(info.front_pid, 10.0)
    for name in (STATE_FILE, KEY_FILE):
        (state_dir / name).unlink(missing_ok=True)
    return info if was_running else None
