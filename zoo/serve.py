"""TorchServe process management for `zoo serve start|stop|status`.

zoo writes a config.properties and starts TorchServe's Java frontend itself (not through the
`torchserve` launcher, which keeps one global pid file and so allows one server per machine).
Secure by default (design.md §6): token authorization on, every address on 127.0.0.1, the model
API off and `allowed_urls` limited to the model store, so the management API cannot load a model
from anywhere else. Each server keeps its state in one folder (ZOO_SERVE_HOME/<port>): the
config, server.json (pid, addresses, models), TorchServe's key_file.json and the logs.
"""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.errors import ZooError

DEFAULT_PORT = 8080
KEY_FILE = "key_file.json"
STATE_FILE = "server.json"
SERVER_CLASS = "org.pytorch.serve.ModelServer"


def serve_home() -> Path:
    return Path(os.environ.get("ZOO_SERVE_HOME") or Path.home() / ".zoo" / "serve")


def state_dir_for(port: int) -> Path:
    return serve_home() / str(port)


@dataclass(frozen=True)
class ServeConfig:
    model_store: Path
    models: tuple[str, ...] = ()  # archive names without .mar; empty means every archive in the store
    port: int = DEFAULT_PORT  # inference; management, metrics and the two gRPC APIs take the next four
    host: str = "127.0.0.1"
    workers: int = 0  # per model; 0 means one per CPU core, at most 4 (single-threaded workers serve more)
    batch_size: int = 1  # TorchServe's dynamic batching: up to this many requests per handler call
    max_batch_delay_ms: int = 50  # how long TorchServe waits to fill a batch
    threads: int = 0  # intra-op threads per worker; 0 means the CPU count divided by the workers
    token_auth: bool = True
    response_timeout_s: int = 120
    max_request_mb: int = 32
    state_dir: Path | None = None  # default ZOO_SERVE_HOME/<port>

    @property
    def worker_count(self) -> int:
        return self.workers or min(os.cpu_count() or 1, 4)

    @property
    def ports(self) -> dict[str, int]:
        p = self.port
        return {"inference": p, "management": p + 1, "metrics": p + 2, "grpc_inference": p + 3, "grpc_management": p + 4}

    @property
    def folder(self) -> Path:
        return Path(self.state_dir) if self.state_dir else state_dir_for(self.port)


@dataclass
class ServerInfo:
    """What server.json records about a running server."""

    pid: int
    state_dir: str
    model_store: str
    models: list[str]
    inference_url: str
    management_url: str
    metrics_url: str
    key_file: str | None
    log_dir: str
    workers: int
    batch_size: int
    max_batch_delay_ms: int
    started: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- keys and HTTP
def read_key(key_file: Path | str, kind: str = "inference", settle_s: float = 2.0) -> str:
    """A key from TorchServe's key_file.json: "inference", "management" or "API".
    TorchServe writes the file in place, at start and when a key is renewed, so a reader can catch it
    empty or half-written: an unparseable file is read again for up to settle_s before it is refused."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            keys = json.loads(Path(key_file).read_text())
            break
        except FileNotFoundError:
            raise ZooError(f"{key_file} does not exist: is the server running? Start it with `zoo serve start`.") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if time.monotonic() > deadline:
                raise ZooError(f"{key_file} is not TorchServe's key file: give the key file `zoo serve start` "
                               f"printed.") from None
            time.sleep(0.05)
    if not isinstance(keys, dict):
        keys = {}
    entry = keys.get(kind) or keys.get(kind.lower()) or {}
    key = entry.get("key") if isinstance(entry, dict) else None
    if not key:
        raise ZooError(f"{key_file} holds no {kind} key: restart the server with `zoo serve start`.")
    return key


def _request(url: str, method: str = "GET", key: str | None = None, body: bytes | None = None,
             timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers. Plain urllib: no proxy, no retries."""
    import urllib.error
    import urllib.request

    # urllib would label a body as a form, which TorchServe then parses into fields: say it is bytes.
    headers = {"Content-Type": "application/octet-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


# ---------------------------------------------------------------- archives
def list_archives(model_store: Path) -> dict[str, str]:
    """name -> version of every .mar in the store (the version comes from its manifest)."""
    found = {}
    for mar in sorted(Path(model_store).glob("*.mar")):
        try:
            with zipfile.ZipFile(mar) as z:
                manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
            raise ZooError(f"{mar} is not a TorchServe archive: delete it or re-run `zoo export`.") from None
        found[mar.stem] = str(manifest.get("model", {}).get("modelVersion") or "1.0")
    return found


def choose_models(model_store: Path, names: tuple[str, ...]) -> dict[str, str]:
    store = Path(model_store)
    if not store.is_dir():
        raise ZooError(f"{store} is not a folder: give the --model-store that `zoo export` wrote archives into.")
    archives = list_archives(store)
    if not archives:
        raise ZooError(f"{store} holds no .mar archives: run `zoo export RUN_DIR` first.")
    unknown = [n for n in names if n not in archives]
    if unknown:
        raise ZooError(f"{', '.join(unknown)} not in {store} (it holds {', '.join(archives)}): pick from those.")
    return {n: archives[n] for n in (names or archives)}


# ---------------------------------------------------------------- config.properties
def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port_block(start: int = 18080, count: int = 5, host: str = "127.0.0.1", step: int = 5) -> int:
    """The first port p >= start with p .. p+count-1 all free: what `--port` needs (it and the four after)."""
    for base in range(start, 65535 - count, step):
        if all(_free(host, p) for p in range(base, base + count)):
            return base
    raise ZooError(f"No {count} consecutive free ports above {start} on {host}: free some ports or pass --port.")


def _worker_socket_base(count: int) -> int:
    """A first worker "port" no other TorchServe uses: workers talk over /tmp/.ts.sock.<port>, and a
    worker deletes a socket of that name, so two servers must never share a range."""
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    taken = {int(p.name.rsplit(".", 1)[1]) for p in tmp.glob(".ts.sock.*") if p.name.rsplit(".", 1)[1].isdigit()}
    for _ in range(200):
        base = random.randrange(10_000, 60_000, 100)
        if not any(base + i in taken for i in range(max(100, count * 20))):
            return base
    raise ZooError(f"No free range of worker sockets in {tmp}: remove stale .ts.sock.* files there.")


def _escape(value: str) -> str:
    """A value for a Java .properties file (backslash is its escape character)."""
    return value.replace("\\", "\\\\")


def config_properties(cfg: ServeConfig, models: dict[str, str], worker_base: int) -> str:
    store = Path(cfg.model_store).resolve()
    if "," in str(store):
        raise ZooError(f"{store} has a comma in its path, which TorchServe cannot read: move the model store.")
    host, ports = cfg.host, cfg.ports
    models_json = {name: {version: {"defaultVersion": True, "marName": f"{name}.mar",
                                    "minWorkers": cfg.worker_count, "maxWorkers": cfg.worker_count,
                                    "batchSize": cfg.batch_size, "maxBatchDelay": cfg.max_batch_delay_ms,
                                    "responseTimeout": cfg.response_timeout_s}}
                   for name, version in models.items()}
    lines = {
        "inference_address": f"http://{host}:{ports['inference']}",
        "management_address": f"http://{host}:{ports['management']}",
        "metrics_address": f"http://{host}:{ports['metrics']}",
        "grpc_inference_address": host,
        "grpc_management_address": host,
        "grpc_inference_port": ports["grpc_inference"],
        "grpc_management_port": ports["grpc_management"],
        "model_store": str(store),
        "load_models": ",".join(f"{n}.mar" for n in models),
        "models": json.dumps(models_json),
        "default_workers_per_model": cfg.worker_count,
        # Secure by default: tokens, no model API, and archives only from this model store.
        "disable_token_authorization": str(not cfg.token_auth).lower(),
        "enable_model_api": "false",
        "allowed_urls": f"\\Qfile://{store}/\\E[^/]+\\.mar",
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "initial_worker_port": worker_base,
        "max_request_size": cfg.max_request_mb * 1024 * 1024,
        "default_response_timeout": cfg.response_timeout_s,
        # A torch.export program takes a while to load on a busy CPU; TorchServe's 120 s would kill the worker.
        "default_startup_timeout": 900,
        "disable_system_metrics": "true",
    }
    return "".join(f"{k}={_escape(str(v))}\n" for k, v in lines.items())


# ---------------------------------------------------------------- processes
def _is_our_server(pid: int, state_dir: Path) -> bool:
    """The pid runs TorchServe with this state folder's config (pids are reused after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust server.json
    return SERVER_CLASS.encode() in cmdline and str(state_dir / "config.properties").encode() in cmdline


def _load_state(state_dir: Path) -> ServerInfo | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def running_server(state_dir: Path) -> ServerInfo | None:
    info = _load_state(state_dir)
    if info is None or not _is_our_server(info.pid, state_dir):
        return None
    return info


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
            errors = [l for l in text if "ERROR" in l or "Error" in l or "Traceback" in l]
            return "\n".join((errors or text)[-lines:])
    return ""


def start(cfg: ServeConfig, timeout_s: float = 300.0, env: dict[str, str] | None = None) -> ServerInfo:
    """Start TorchServe and wait until every model answers a prediction; returns what server.json holds.

    env: extra environment for the server and its workers (tests use it to hide the zoo package).
    """
    if cfg.workers < 0 or cfg.batch_size < 1 or cfg.max_batch_delay_ms < 0:
        raise ZooError("--workers must be at least 0 (auto), --batch-size at least 1 and --max-batch-delay at least 0.")
    state_dir = cfg.folder
    if running_server(state_dir):
        raise ZooError(f"A zoo server already runs on port {cfg.port}: stop it with `zoo serve stop --port {cfg.port}`.")
    models = choose_models(cfg.model_store, cfg.models)
    busy = [f"{name} {port}" for name, port in cfg.ports.items() if not _free(cfg.host, port)]
    if busy:
        raise ZooError(f"Port(s) {', '.join(busy)} on {cfg.host} are in use: choose another --port "
                       f"(zoo uses it and the four after it).")
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)  # it will hold the keys
    log_dir = state_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    for stale in (KEY_FILE, STATE_FILE):
        (state_dir / stale).unlink(missing_ok=True)
    config = state_dir / "config.properties"
    config.write_text(config_properties(cfg, models, _worker_socket_base(len(models) * cfg.worker_count)))

    ts_home = _ts_home()
    cmd = [_java(), "-Xmx2g", f"-Dmodel_server_home={ts_home}", "-cp", f".:{ts_home / 'ts' / 'frontend'}/*",
           SERVER_CLASS, "--python", sys.executable, "-f", str(config), "-s", str(Path(cfg.model_store).resolve()),
           "-ncs"]
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.worker_count)
    server_env = {**os.environ, "LOG_LOCATION": str(log_dir), "METRICS_LOCATION": str(log_dir),
                  "ZOO_SERVE_THREADS": str(threads), **(env or {})}
    with open(log_dir / "server.out", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=state_dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env, start_new_session=True)
    ports = cfg.ports
    info = ServerInfo(pid=proc.pid, state_dir=str(state_dir), model_store=str(Path(cfg.model_store).resolve()),
                      models=list(models), inference_url=f"http://{cfg.host}:{ports['inference']}",
                      management_url=f"http://{cfg.host}:{ports['management']}",
                      metrics_url=f"http://{cfg.host}:{ports['metrics']}",
                      key_file=str(state_dir / KEY_FILE) if cfg.token_auth else None, log_dir=str(log_dir),
                      workers=cfg.worker_count, batch_size=cfg.batch_size, max_batch_delay_ms=cfg.max_batch_delay_ms)
    (state_dir / STATE_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
    try:
        _wait_until_answering(info, proc, timeout_s)
    except BaseException:
        stop(state_dir)
        raise
    return info


def probe_image() -> bytes:
    """A small valid PNG: what `start` sends each model to see that it answers."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 160, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _wait_until_answering(info: ServerInfo, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(info.models)
    probe = probe_image()
    log_dir = Path(info.log_dir)
    while pending:
        if proc.poll() is not None:
            raise ZooError(f"TorchServe exited with status {proc.returncode} while starting: see {log_dir}.\n"
                           + _log_tail(log_dir))
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
        status, _ = _request(f"{info.inference_url}/predictions/{name}", "POST", key, probe, timeout=60)
        if status == 200:
            pending.pop(0)
        else:
            time.sleep(1.0)


def stop(state_dir: Path, timeout_s: float = 60.0) -> ServerInfo | None:
    """Stop the server recorded in state_dir: SIGTERM (TorchServe stops its workers), then SIGKILL
    whatever is left of its process group. Returns None when no server was running."""
    state_dir = Path(state_dir)
    info = _load_state(state_dir)
    if info is None:
        return None
    was_running = _is_our_server(info.pid, state_dir)
    if was_running:
        try:
            os.kill(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(info.pid):
            time.sleep(0.2)
        _kill_group(info.pid)
    for name in (STATE_FILE, KEY_FILE):
        (state_dir / name).unlink(missing_ok=True)
    return info if was_running else None


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = _proc_stat(Path(f"/proc/{pid}"))
    return stat is None or stat[0] != "Z"  # a zombie has exited; no /proc (macOS): signal 0 decides


def _kill_group(pid: int, timeout_s: float = 15.0) -> None:
    """Workers live in the server's process group (start_new_session): none may outlive it.
    SIGKILL is delivered asynchronously, so wait until every member has really exited."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap the server when it is our own child
        except ChildProcessError:
            pass
        if not live_group_members(pid) or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def live_group_members(pgid: int) -> list[int]:
    """Pids of process group pgid that have not exited. A zombie has exited: only its pid entry is
    left until its parent reaps it (orphaned workers wait on PID 1, which some containers never
    run), so killpg(pgid, 0), which still succeeds on zombies, cannot answer this."""
    proc = Path("/proc")
    if not proc.is_dir():  # macOS: no /proc; signal 0 is the best test there is
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.glob("[0-9]*"):
        stat = _proc_stat(entry)
        if stat is not None and stat[0] != "Z" and stat[1] == pgid:
            members.append(int(entry.name))
    return members


def _proc_stat(entry: Path) -> tuple[str, int] | None:
    """(state, process group) from /proc/PID/stat; None when it is gone (or there is no /proc)."""
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ") "
        return fields[0], int(fields[2])  # fields after the name: state, ppid, pgrp, ...
    except (OSError, IndexError, ValueError):
        return None


def status(state_dir: Path) -> dict | None:
    """None when no server runs from state_dir; else server.json plus each model's worker states."""
    info = running_server(Path(state_dir))
    if info is None:
        return None
    key = read_key(info.key_file, "management") if info.key_file and Path(info.key_file).is_file() else None
    models = {}
    for name in info.models:
        code, body = _request(f"{info.management_url}/models/{name}", key=key)
        if code != 200:
            models[name] = {"status": f"no answer (HTTP {code})" if code else "no answer"}
            continue
        described = json.loads(body)[0]
        workers = described.get("workers", [])
        models[name] = {"version": described.get("modelVersion"), "batch_size": described.get("batchSize"),
                        "max_batch_delay_ms": described.get("maxBatchDelay"),
                        "workers": [w.get("status") for w in workers]}
    return {**info.to_json(), "model_status": models}


def describe(info: dict) -> str:
    """Human lines for `zoo serve start|status`."""
    lines = [f"TorchServe (pid {info['pid']}) serves from {info['model_store']}:"]
    statuses = info.get("model_status", {})
    for name in info["models"]:
        state = statuses.get(name)
        workers = ", ".join(state.get("workers", [])) if state and "workers" in state else (state or {}).get("status", "")
        lines.append(f"  {info['inference_url']}/predictions/{name}" + (f"  workers: {workers}" if workers else ""))
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
