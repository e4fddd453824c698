"""`zoo serve` without a server: the generated config, start's refusals, the CLI and the client's URL check."""
from __future__ import annotations

import json

import pytest

from zoo.errors import ZooError


def test_config_is_secure_by_default(tmp_path):
    from zoo.serve import ServeConfig, config_properties

    text = config_properties(ServeConfig(model_store=tmp_path, port=9100, batch_size=4, workers=2),
                             {"tiny": "1.0"}, worker_base=20000)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["allowed_urls"].startswith("\\\\Qfile://" + str(tmp_path.resolve()))
    models = json.loads(props["models"])["tiny"]["1.0"]
    assert (models["batchSize"], models["minWorkers"], models["maxWorkers"]) == (4, 2, 2)


def test_torchserve_inference_api_stays_on_loopback_behind_the_front_door(tmp_path):
    """The public inference port belongs to zoo's front door, on --host; TorchServe's own API five ports up, on
    127.0.0.1 whatever --host says, so nothing reaches it without passing the front door."""
    from zoo.serve import ServeConfig, config_properties

    cfg = ServeConfig(model_store=tmp_path, port=9100, host="0.0.0.0")
    props = dict(line.split("=", 1) for line in config_properties(cfg, {"tiny": "1.0"}, 20000).splitlines())
    assert props["inference_address"] == "http://127.0.0.1:9105" and cfg.ports["inference"] == 9100
    assert props["management_address"] == "http://0.0.0.0:9101"


def test_serve_mistakes_are_clear(tmp_path, monkeypatch):
    from zoo.serve import ServeConfig, start

    monkeypatch.setenv("ZOO_SERVE_HOME", str(tmp_path / "home"))
    with pytest.raises(ZooError, match="holds no .mar"):
        start(ServeConfig(model_store=tmp_path))
    with pytest.raises(ZooError, match="is not a folder"):
        start(ServeConfig(model_store=tmp_path / "missing"))


def test_cli_stop_and_status_report_a_server_that_is_not_running(runner, tmp_path, monkeypatch):
    from zoo.cli import app

    monkeypatch.setenv("ZOO_SERVE_HOME", str(tmp_path))
    for command in ("stop", "status"):
        result = runner.invoke(app, ["serve", command, "--port", "9555"])
        assert result.exit_code == 1 and "No zoo server is running on port 9555" in result.output
    result = runner.invoke(app, ["serve", "start", "--model-store", str(tmp_path)])
    assert result.exit_code == 1 and "holds no .mar archives" in result.output


def test_client_wants_a_prediction_endpoint():
    from zoo.serve import split_endpoint

    assert split_endpoint("http://127.0.0.1:8080/predictions/lite0") == ("http://127.0.0.1:8080", "lite0")
    with pytest.raises(ZooError, match="predictions/MODEL_NAME"):
        split_endpoint("http://127.0.0.1:8080")
