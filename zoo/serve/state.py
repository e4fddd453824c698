"""What a state folder records about its server (server.json), and whether that server still runs."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.serve.config import CONFIG_FILE, KSERVE_CONFIG_FILE, KSERVE_MODULE, TORCHSERVE

STATE_FILE = "server.json"
SERVER_CLASS = "org.pytorch.serve.ModelServer"  # the Java class TorchServe's frontend runs
FRONT_DOOR = "zoo.serve.front_door"  # the module in front of TorchServe's inference API


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
    engine: str = TORCHSERVE  # or KSERVE; server.json files written before there was a choice are TorchServe's
    threads: int = 0  # KServe engine: ONNX Runtime threads per inference (TorchServe: see its workers)
    front_pid: int = 0  # TorchServe: zoo's front door on the inference port (0: none, as before there was one)

    def to_json(self) -> dict:
        return asdict(self)


def save_state(info: ServerInfo) -> None:
    (Path(info.state_dir) / STATE_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")


def load_state(state_dir: Path) -> ServerInfo | None:
    """What server.json records, whether or not that server still runs; None without a readable one."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def _cmdline(pid: int) -> list[bytes] | None:
    """The pid's command line; None without /proc (macOS) while it lives, [] when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return []
        return None


def is_front_door(pid: int, state_dir: Path) -> bool:
    """The pid runs zoo's front door for this state folder (pids are reused)."""
    cmdline = _cmdline(pid)
    return cmdline is None or (FRONT_DOOR.encode() in cmdline and str(Path(state_dir).resolve()).encode() in cmdline)


def is_our_server(pid: int, state_dir: Path) -> bool:
    """The pid runs TorchServe or zoo's KServe engine with this state folder's config (pids are reused after a
    reboot)."""
    cmdline = _cmdline(pid)
    if cmdline is None:  # no /proc (macOS): trust server.json
        return True
    engines = ((SERVER_CLASS, CONFIG_FILE), (KSERVE_MODULE, KSERVE_CONFIG_FILE))
    return any(marker.encode() in cmdline and str(Path(state_dir) / config).encode() in cmdline
               for marker, config in engines)


def running_server(state_dir: Path) -> ServerInfo | None:
    """The server recorded in state_dir when it is still running; else None."""
    info = load_state(state_dir)
    if info is None or not is_our_server(info.pid, Path(state_dir)):
        return None
    return info
