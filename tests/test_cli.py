"""The command line: help for every command, clear one-line errors for bad input."""
import pytest
import typer
import typer.core

from zoo.cli import app


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


def _choices(command_path: tuple[str, ...], option: str) -> list[str]:
    command = typer.main.get_command(app)
    for name in command_path:
        command = command.commands[name]
    param = next(p for p in command.params if p.name == option)
    return [member.value for member in param.type_descriptor.annotation]  # the Enum typer validates against


def test_cli_choices_are_the_library_registries():
    from zoo.data.samples import SAMPLES
    from zoo.export.formats import NO_QUANTIZATION, QUANTIZE_VARIANTS, Runtime
    from zoo.serve.config import ENGINES
    from zoo.training.balance import BALANCE_MODES
    from zoo.training.strategies import AUTO, STRATEGIES

    assert _choices(("finetune",), "strategy") == [*STRATEGIES, AUTO]
    assert _choices(("finetune",), "balance") == list(BALANCE_MODES)
    assert _choices(("export",), "quantize") == [NO_QUANTIZATION, *QUANTIZE_VARIANTS]
    assert _choices(("export",), "runtime") == [r.value for r in Runtime]
    assert _choices(("data", "sample"), "name") == list(SAMPLES)
    assert _choices(("serve", "start"), "engine") == list(ENGINES)


def test_advisor_and_finetune_share_the_size_and_imbalance_thresholds():
    import zoo.advisor.recommend as recommend
    from zoo.thresholds import IMBALANCE_THRESHOLD, SIZE_THRESHOLD, is_skewed, is_small
    from zoo.training.balance import resolve_balance

    assert recommend.AdviseSettings().size_threshold == SIZE_THRESHOLD
    assert is_small(SIZE_THRESHOLD) and not is_small(SIZE_THRESHOLD + 1)
    skewed = [int(10 * IMBALANCE_THRESHOLD), 10]
    assert is_skewed(skewed) and resolve_balance("auto", skewed) == "loss"
    assert not is_skewed([int(10 * IMBALANCE_THRESHOLD) - 1, 10]) and resolve_balance("auto", [19, 10]) == "none"
