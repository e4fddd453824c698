"""CLI conventions: --version, exit status 1 for a failed piece of work and 2 only for usage errors,
tokens from the environment, JSON on stdout, shell completion."""
import json

import typer

from zoo import __version__
from zoo.cli import app


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"zoo {__version__}"


def test_usage_errors_exit_2_and_failures_of_the_work_exit_1(runner, tmp_path):
    usage = [["finetune", str(tmp_path), "--no-such-flag"], ["finetune", str(tmp_path), "--strategy", "magic"],
             ["evaluate"], ["no-such-command"], ["finetune", str(tmp_path / "missing")]]
    for args in usage:
        assert runner.invoke(app, args).exit_code == 2, args
    (tmp_path / "only").mkdir()
    failures = [["finetune", str(tmp_path / "only"), "--out", str(tmp_path / "run")],  # no class folders
                ["predict", str(tmp_path), "--model", str(tmp_path)],  # no images
                ["evaluate", str(tmp_path / "only"), str(tmp_path)]]  # not a model
    for args in failures:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)


def test_zoos_own_checks_of_how_it_was_called_exit_2(runner, tiny_textures, tmp_path):
    """UsageError: values click lets through but zoo refuses, in one sentence, before any work."""
    (tmp_path / "a-file").write_text("x")
    finetune = ["finetune", str(tiny_textures), "--out", str(tmp_path / "run")]
    usage = [[*finetune, "--lr", "inf"], [*finetune, "--image-size", "x"], [*finetune, "--model", "resnet19"],
             [*finetune, "--resume", "--force"], ["finetune", str(tiny_textures), "--out", str(tmp_path / "a-file")],
             ["predict", str(tmp_path), "--model", str(tmp_path), "--server", "http://127.0.0.1:9/predictions/x"]]
    for args in usage:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, (args, result.output)
    assert not (tmp_path / "run").exists()


def test_tokens_come_from_zoo_token_and_completion_is_on():
    command = typer.main.get_command(app)
    for name in ("predict", "evaluate"):
        (token,) = [p for p in command.commands[name].params if p.name == "token"]  # type: ignore[attr-defined]
        assert token.envvar == "ZOO_TOKEN"
    assert {"install_completion", "show_completion"} <= {p.name for p in command.params}


def test_json_flags(runner, tiny_textures, tmp_path):
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for cmd in (commands["finetune"], commands["export"], commands["serve"].commands["start"]):
        assert "--json" in {o for p in cmd.params for o in p.opts}, cmd.name
    result = runner.invoke(app, ["finetune", str(tiny_textures), "--epochs", "1", "--batch-size", "8", "--out",
                                 str(tmp_path / "run"), "--log", "none", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["best_epoch"] == 1 and "accuracy" in metrics
