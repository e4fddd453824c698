"""Every command and option the README shows exists (checked against the commands' --help)."""
import functools
import re
from pathlib import Path

import typer

from zoo.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _mentions() -> list[list[str]]:
    """Token lists after `zoo` in the README's code blocks and inline code."""
    texts = re.findall(r"```(?:bash|text)?\n(.*?)```", README, re.S) + re.findall(r"`(zoo [^`]+)`", README)
    found = []
    for text in texts:
        for line in text.splitlines():
            line = line.split("#")[0].strip().lstrip("$ ").strip()
            if line.startswith("zoo "):
                found.append(line.split()[1:])
    for row in re.findall(r"^\| `(zoo [^`]+)`(.*)$", README, re.M):  # the command reference table
        found.append(row[0].split()[1:] + re.findall(r"--[a-z][a-z0-9/-]*", row[1]))
    return found


@functools.cache
def _root():
    return typer.main.get_command(app)  # builds every click command: once, not once per mention


def _resolve(tokens: list[str]):
    group = _root()
    path = []
    for tok in tokens:
        commands = getattr(group, "commands", {})
        for alt in tok.replace("\\|", "|").split("|"):
            if alt in commands:
                group, path = commands[alt], path + [alt]
                break
        else:
            break
    return group, path


def test_readme_mentions_many_commands():
    paths = {" ".join(_resolve(t)[1]) for t in _mentions()}
    assert {"models", "models check", "data sample", "data inspect", "advise", "finetune", "export", "serve start",
            "serve stop", "predict", "demo"} <= paths


def test_every_option_in_the_readme_exists(runner):
    checked = 0
    helps: dict[tuple[str, ...], str] = {}  # one --help per command: the README mentions most of them many times
    for tokens in _mentions():
        command, path = _resolve(tokens)
        assert path, f"`zoo {' '.join(tokens)}` in the README is not a command"
        if tuple(path) not in helps:
            help_text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
            assert help_text.exit_code == 0
            helps[tuple(path)] = help_text.output
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for tok in tokens[len(path):]:
            for opt in re.findall(r"--[a-z][a-z0-9-]*", tok):
                assert opt in known, f"README shows `zoo {' '.join(path)} {opt}`, which --help does not list"
                assert opt in helps[tuple(path)]
                checked += 1
    assert checked > 20
