"""Where a server lives and how it is configured: ServeConfig, ports, the state folder, config.properties."""
from __future__ import annotations

import json
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import UsageError, ZooError

DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"  # where TorchServe's own inference API listens, behind the front door
CONFIG_FILE = "config.properties"
TORCHSERVE = "torchserve"  # `zoo serve start --engine`: TorchServe on a model store's .mar archives (Java)
KSERVE = "kserve"  # KServe's ModelServer on an export folder, the Open Inference Protocol (no Java)
ENGINES = (TORCHSERVE, KSERVE)
ENGINE_NAMES = {TORCHSERVE: "TorchServe", KSERVE: "the KServe engine"}
KSERVE_CONFIG_FILE = "kserve.json"  # what zoo.serve.kserve_engine serves, in the state folder
KSERVE_MODULE = "zoo.serve.kserve_engine"


def serve_home() -> Path:
    return Path(os.environ.get("ZOO_SERVE_HOME") or Path.home() / ".zoo" / "serve")


def state_dir_for(port: int) -> Path:
    return serve_home() / str(port)


@dataclass(frozen=True)
class ServeConfig:
    model_store: Path
    models: tuple[str, ...] = ()  # archive names without .mar; empty means every archive in the store
    port: int = DEFAULT_PORT  # inference (the front door); management, metrics, the two gRPC APIs and TorchServe's
    # own inference address (behind the front door, on 127.0.0.1) take the next five
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
        return {"inference": p, "management": p + 1, "metrics": p + 2, "grpc_inference": p + 3,
                "grpc_management": p + 4, "torchserve": p + 5}

    @property
    def folder(self) -> Path:
        return Path(self.state_dir) if self.state_dir else state_dir_for(self.port)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port_block(start: int = 18080, count: int = 6, host: str = "127.0.0.1", step: int = 6) -> int:
    """The first port p >= start with p .. p+count-1 all free: what `--port` needs (it and the five after)."""
    for base in range(start, 65535 - count, step):
        if all(port_is_free(host, p) for p in range(base, base + count)):
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
        raise UsageError(f"{store} has a comma in its path, which TorchServe cannot read: move the model store.")
    host, ports = cfg.host, cfg.ports
    models_json = {name: {version: {"defaultVersion": True, "marName": f"{name}.mar",
                                    "minWorkers": cfg.worker_count, "maxWorkers": cfg.worker_count,
                                    "batchSize": cfg.batch_size, "maxBatchDelay": cfg.max_batch_delay_ms,
                                    "responseTimeout": cfg.response_timeout_s}}
                   for name, version in models.items()}
    lines = {
        # Behind the front door (zoo.serve.front_door), which alone listens on the public inference port.
        "inference_address": f"http://{LOOPBACK}:{ports['torchserve']}",
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
        # Metrics on the metrics endpoint, not as log lines for every request (see log_config.py).
        "metrics_mode": "prometheus",
    }
    return "".join(f"{k}={_escape(str(v))}\n" for k, v in lines.items())


def write_config(cfg: ServeConfig, models: dict[str, str], state_dir: Path) -> Path:
    """state_dir/config.properties for these models, with worker sockets no other server uses."""
    path = Path(state_dir) / CONFIG_FILE
    path.write_text(config_properties(cfg, models, _worker_socket_base(len(models) * cfg.worker_count)))
    return path
