"""The command line: help for every command, clear one-line errors for bad input."""
import typer.core
import pytest
import typer

from cli import app


def _command_paths(group, prefix=()):
    yield prefix
    if hasattr(group, "commands"):
        for name, cmd in group.commands.items():
            yield from _command_paths(cmd, prefix + (name,))


ALL_COMMANDS = list(_command_paths(typer.main.get_command(app)))


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "zoo")
def test_every_command_has_help(runner, path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_unknown_model_name(runner):
    result = runner.invoke(app, ["models", "check", "resnet19"])
    assert result.exit_code != 0
    assert "Unknown model 'resnet19'" in result.output and "Traceback" not in result.output


def test_bad_path(runner, tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_models_json_lists_fields(runner):
    import json

    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    items = json.loads(result.output)
    assert len(items) >= 13
    lite = {i["name"]: i for i in items if i["name"].startswith("efficientnet_lite")}
    assert all(i["weights"]["available"] for i in lite.values()) and len(lite) == 3
