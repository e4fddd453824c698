"""TorchServe process management for `zoo serve start|stop|status`, and the client `zoo predict --server` uses.

zoo writes a config.properties and starts TorchServe's Java frontend itself (not through the
`torchserve` launcher, which keeps one global pid file and so allows one server per machine).
Secure by default: token authorization on, every address on 127.0.0.1, the model API off and
`allowed_urls` limited to the model store, so the management API cannot load a model from
anywhere else. Each server keeps its state in one folder (ZOO_SERVE_HOME/<port>): the config,
server.json (pid, addresses, models), TorchServe's key_file.json and the logs.

Modules: config (ServeConfig, ports, config.properties), archives (the model store), keys (the key
file and the one request helper), state (server.json), process (start, stop), process_group (/proc),
status_report (status, describe) and client (ServeClient, predict_remote).
"""
from zoo.serve.archives import choose_models, list_archives
from zoo.serve.client import ServeClient, predict_remote, split_endpoint
from zoo.serve.config import (
    DEFAULT_PORT,
    ServeConfig,
    config_properties,
    free_port_block,
    port_is_free,
    serve_home,
    state_dir_for,
)
from zoo.serve.keys import KEY_FILE, read_key
from zoo.serve.process import probe_image, start, stop
from zoo.serve.process_group import kill_group, live_group_members
from zoo.serve.state import STATE_FILE, ServerInfo, load_state, running_server
from zoo.serve.status_report import describe, status

__all__ = [
    "DEFAULT_PORT", "KEY_FILE", "STATE_FILE", "ServeClient", "ServeConfig", "ServerInfo", "choose_models",
    "config_properties", "describe", "free_port_block", "kill_group", "list_archives", "live_group_members",
    "load_state", "port_is_free", "predict_remote", "probe_image", "read_key", "running_server", "serve_home",
    "split_endpoint", "start", "state_dir_for", "status", "stop",
]
