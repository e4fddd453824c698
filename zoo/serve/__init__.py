"""Serving for `zoo serve start|stop|status`, and the client `zoo predict --server` uses.

Two engines (`--engine`): TorchServe on a model store's .mar archives (below), and zoo's KServe engine,
KServe's ModelServer on an export folder speaking the Open Inference Protocol, with no Java
(kserve_engine, kserve_process, v2). Both keep the same state folder and server.json, so status, stop
and the client treat them alike.

zoo writes a config.properties and starts TorchServe's Java frontend itself (not through the
`torchserve` launcher, which keeps one global pid file and so allows one server per machine).
Secure by default: token authorization on, every address on 127.0.0.1, the model API off and
`allowed_urls` limited to the model store, so the management API cannot load a model from
anywhere else. Each server keeps its state in one folder (ZOO_SERVE_HOME/<port>): the config,
server.json (pid, addresses, models), TorchServe's key_file.json and the logs. TorchServe's inference
API listens on 127.0.0.1 behind zoo's front door (front_door), which holds the public inference port so
that an oversized or urlencoded body gets a message instead of TorchServe's empty 413 or 500.

Modules: config (ServeConfig, ports, config.properties, the engines), archives (the model store), keys
(the key file and the one request helper), state (server.json), process (start, stop), process_group
(/proc), front_door (the process on TorchServe's inference port), status_report (status, describe),
client (ServeClient, predict_remote), v2 (the Open Inference Protocol's wire format), kserve_process
(KServeConfig, start_kserve) and kserve_engine (the server process itself; it imports kserve, which
nothing else here does).
"""
from zoo.serve.archives import choose_models, list_archives
from zoo.serve.client import Endpoint, ServeClient, parse_endpoint, predict_remote, split_endpoint
from zoo.serve.config import (
    DEFAULT_PORT,
    ENGINE_NAMES,
    ENGINES,
    KSERVE,
    TORCHSERVE,
    ServeConfig,
    config_properties,
    free_port_block,
    port_is_free,
    serve_home,
    state_dir_for,
)
from zoo.serve.keys import KEY_FILE, read_key
from zoo.serve.kserve_process import KServeConfig, start_kserve
from zoo.serve.process import probe_image, start, stop
from zoo.serve.process_group import kill_group, live_group_members
from zoo.serve.state import STATE_FILE, ServerInfo, load_state, running_server
from zoo.serve.status_report import describe, status

__all__ = [
    "DEFAULT_PORT", "ENGINES", "ENGINE_NAMES", "KEY_FILE", "KSERVE", "STATE_FILE", "TORCHSERVE", "Endpoint",
    "KServeConfig", "ServeClient", "ServeConfig", "ServerInfo", "choose_models", "config_properties", "describe",
    "free_port_block", "kill_group", "list_archives", "live_group_members", "load_state", "parse_endpoint",
    "port_is_free", "predict_remote", "probe_image", "read_key", "running_server", "serve_home", "split_endpoint",
    "start", "start_kserve", "state_dir_for", "status", "stop",
]
