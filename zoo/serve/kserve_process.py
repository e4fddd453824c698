"""Starting zoo's KServe engine (zoo/serve/kserve_engine.py) in the background, as `zoo serve start --engine kserve`.

The engine is one Python process in a session of its own, started on an export folder: no model
store, no archives, no Java. Its state folder (ZOO_SERVE_HOME/<port>) holds kserve.json (what it
serves), server.json (the same record TorchServe's gets, engine "kserve") and logs/server.out, so
`zoo serve status` and `zoo serve stop` treat both engines alike. `start` returns once
/v2/health/ready answers and every model has answered a probe image over the Open Inference Protocol.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from zoo.errors import UsageError, ZooError
from zoo.export.formats import FEATURES_SUFFIX, check_archive_name, default_archive_name
from zoo.serve.config import DEFAULT_PORT, KSERVE, KSERVE_CONFIG_FILE, KSERVE_MODULE, port_is_free, state_dir_for
from zoo.serve.keys import KEY_FILE, request
from zoo.serve.state import STATE_FILE, ServerInfo, running_server
from zoo.serve.v2 import Limits, encode_images


@dataclass(frozen=True)
class KServeConfig:
    export_dir: Path
    name: str | None = None  # the classifier's model name (default: the run's, as `zoo export` names archives)
    port: int = DEFAULT_PORT  # one port: both protocols, health, metadata and metrics
    host: str = "127.0.0.1"
    workers: int = 0  # inferences at once; 0 means one per CPU core, at most 4
    threads: int = 0  # ONNX Runtime threads per inference; 0 means the CPU count divided by the workers
    features: bool = True  # also serve features.onnx as NAME-features, when the export has it
    variant: str | None = None  # fp32, int8 or fp16 instead of what deploy.json names (the benchmarks compare them)
    state_dir: Path | None = None  # default ZOO_SERVE_HOME/<port>
    limits: Limits = field(default_factory=Limits)

    @property
    def folder(self) -> Path:
        return Path(self.state_dir) if self.state_dir else state_dir_for(self.port)

    @property
    def worker_count(self) -> int:
        return self.workers or min(os.cpu_count() or 1, 4)

    @property
    def thread_count(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.worker_count)


def engine_config(cfg: dict) -> dict:
    """What the engine process serves, from its JSON configuration, defaults filled in: export_dir and models
    ({name: "classifier" | "features"}) are needed; host 127.0.0.1, port 8080, workers, threads and variant
    as KServeConfig's, limits as v2.Limits'. ValueError names what is wrong."""
    if not isinstance(cfg.get("export_dir"), str) or not isinstance(cfg.get("models"), dict) or not cfg["models"]:
        raise ValueError('it needs "export_dir" (a folder) and "models" ({name: "classifier" or "features"})')
    odd = [kind for kind in cfg["models"].values() if kind not in ("classifier", "features")]
    if odd:
        raise ValueError(f'a model\'s kind is {odd[0]!r}, not "classifier" or "features"')
    defaults = KServeConfig(export_dir=Path(cfg["export_dir"]), workers=max(0, int(cfg.get("workers", 0))),
                            threads=max(0, int(cfg.get("threads", 0))), variant=cfg.get("variant"))
    limits = cfg.get("limits") or {}
    return {"export_dir": cfg["export_dir"], "models": dict(cfg["models"]), "host": str(cfg.get("host", defaults.host)),
            "port": int(cfg.get("port", defaults.port)), "workers": defaults.worker_count,
            "threads": defaults.thread_count, "variant": defaults.variant, "limits": vars(Limits(**limits))}


def model_name(export_dir: Path) -> str:
    """The name `zoo export` gave this export's archives: the run directory's (export_report.json says which)."""
    try:
        run_dir = json.loads((export_dir / "export_report.json").read_text()).get("run_dir")
    except (OSError, ValueError, AttributeError):
        run_dir = None
    folder = export_dir.resolve()
    return default_archive_name(Path(run_dir) if run_dir else folder.parent if folder.name == "export" else folder)


def served_models(cfg: KServeConfig) -> dict[str, str]:
    """name -> kind (classifier, features) of what the export folder can serve; refused with one sentence."""
    export_dir = Path(cfg.export_dir)
    if not (export_dir / "classifier.onnx").is_file():
        raise UsageError(f"{export_dir} holds no classifier.onnx: give the export folder `zoo export` wrote "
                         "(e.g. runs/NAME/export).")
    name = check_archive_name(cfg.name or model_name(export_dir))
    models = {name: "classifier"}
    if cfg.features and (export_dir / "features.onnx").is_file():
        models[name + FEATURES_SUFFIX] = "features"
    return models


def _check(cfg: KServeConfig) -> dict[str, str]:
    if cfg.workers < 0 or cfg.threads < 0:
        raise UsageError("--workers and --threads must be at least 0 (auto).")
    if find_spec("kserve") is None:
        raise ZooError("The KServe engine needs the kserve package: `pip install 'zoo[kserve]'` (make setup "
                       "installs it).")
    if running_server(cfg.folder):
        raise ZooError(f"A zoo server already runs on port {cfg.port}: stop it with "
                       f"`zoo serve stop --port {cfg.port}`.")
    models = served_models(cfg)
    if not port_is_free(cfg.host, cfg.port):
        raise ZooError(f"Port {cfg.port} on {cfg.host} is in use: choose another --port.")
    return models


def start_kserve(cfg: KServeConfig, timeout_s: float = 300.0, env: dict[str, str] | None = None) -> ServerInfo:
    """Start the engine and wait until every model answers a probe image; returns what server.json holds.

    env: extra environment for the server (tests use it to take Java off the PATH).
    """
    from zoo.serve.process import record_and_wait

    models = _check(cfg)
    state_dir = cfg.folder
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    for stale in (KEY_FILE, STATE_FILE):
        (state_dir / stale).unlink(missing_ok=True)
    config = state_dir / KSERVE_CONFIG_FILE
    config.write_text(json.dumps({"export_dir": str(Path(cfg.export_dir).resolve()), "models": models,
                                  "host": cfg.host, "port": cfg.port, "workers": cfg.worker_count,
                                  "threads": cfg.thread_count, "variant": cfg.variant, "limits": vars(cfg.limits)},
                                 indent=2) + "\n")
    with open(log_dir / "server.out", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", KSERVE_MODULE, str(config)], cwd=state_dir, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    url = f"http://{cfg.host}:{cfg.port}"
    info = ServerInfo(pid=proc.pid, state_dir=str(state_dir), model_store=str(Path(cfg.export_dir).resolve()),
                      models=list(models), inference_url=url, management_url=url, metrics_url=f"{url}/metrics",
                      key_file=None, log_dir=str(log_dir), workers=cfg.worker_count, batch_size=1,
                      max_batch_delay_ms=0, engine=KSERVE, threads=cfg.thread_count)
    return record_and_wait(info, lambda: _wait_until_answering(info, proc, timeout_s))


def _log_tail(log_dir: Path, lines: int = 15) -> str:
    path = log_dir / "server.out"
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    errors = [line for line in text if "zoo:" in line or "Error" in line or "ERROR" in line]
    return "\n".join((errors or text)[-lines:])


def _wait_until_answering(info: ServerInfo, proc: subprocess.Popen, timeout_s: float) -> None:
    """Ready (/v2/health/ready), then one probe image per model through the Open Inference Protocol."""
    from zoo.serve.process import probe_image

    deadline = time.monotonic() + timeout_s
    pending = ["/v2/health/ready", *(f"/v2/models/{name}/infer" for name in info.models)]
    body, headers = encode_images([probe_image()])
    log_dir = Path(info.log_dir)
    while pending:
        if proc.poll() is not None:
            raise ZooError(f"The KServe engine exited with status {proc.returncode} while starting: see {log_dir}.\n"
                           + _log_tail(log_dir))
        if time.monotonic() > deadline:
            raise ZooError(f"The KServe engine did not answer {pending[0]} within {timeout_s:.0f} s: see "
                           f"{log_dir}.\n" + _log_tail(log_dir))
        path = pending[0]
        probe = path.endswith("/infer")
        status, _ = request(info.inference_url + path, "POST" if probe else "GET", body=body if probe else None,
                            timeout=60, headers=headers if probe else None)
        if status == 200:
            pending.pop(0)
        else:
            time.sleep(0.5)
