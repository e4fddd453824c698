"""Bad images are skipped and counted; user mistakes end in one sentence, and nothing is overwritten."""
import json
import shutil

import pytest

from zoo.cli import app
from zoo.errors import UsageError, ZooError
from zoo.training.finetune import finetune


def _one_line_error(result, code: int = 2) -> str:
    """The one line a ZooError prints; exit status 2 for a usage error (UsageError), 1 when the work failed."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_unreadable_images_are_skipped_with_a_warning_and_counted(runner, tiny_copy, tmp_path):
    good = sorted((tiny_copy / "train" / "grass").glob("*.png"))[0].read_bytes()
    bad = {
        tiny_copy / "train" / "brick" / "garbage.png": bytes(range(256)) * 40,
        tiny_copy / "train" / "grass" / "truncated.png": good[: len(good) // 2],
        tiny_copy / "val" / "gravel" / "empty.jpg": b"",
        tiny_copy / "train" / "gravel" / "notes.jpg": b"these are my notes, not a photo\n" * 10,
    }
    for path, data in bad.items():
        path.write_bytes(data)
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(tiny_copy), "--epochs", "2", "--no-augment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in bad:
        assert f"skipping {path}" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == {"train": 15, "val": 6, "test": 0, "skipped": 4}
    assert {s["path"] for s in metrics["skipped"]} == {str(p) for p in bad}
    assert all(s["reason"] for s in metrics["skipped"])


def _class_folder_missing_images(data):
    (data / "train" / "empty_class").mkdir()


def _one_class(data):
    for split in ("train", "val"):
        for cls in ("grass", "gravel"):
            shutil.rmtree(data / split / cls)


@pytest.mark.parametrize("args,damage,message,code", [
    ([], _class_folder_missing_images, "has no images", 1),  # the data, not the command: the work failed
    ([], _one_class, "only one class", 1),
    (["--model", "resnet19"], None, "Unknown model 'resnet19'", 2),
    (["--strategy", "magic"], None, "magic", 2),
    (["--strategy", "partial", "--freeze-until", "stage9"], None, "'stage9' is not a stage of efficientnet_lite0", 2),
    (["--strategy", "head", "--freeze-until", "stage3"], None, "only applies to --strategy partial", 2),
    (["--resume", "--force"], None, "contradict", 2),
    (["--image-size", "big"], None, "--image-size must be auto or a whole number", 2),
    (["--image-size", "8"], None, "--image-size 8 is outside 32-1024 pixels", 2),
], ids=["empty-class", "one-class", "unknown-model", "unknown-strategy", "bad-freeze-point", "freeze-with-head",
        "resume-and-force", "image-size-word", "image-size-too-small"])
def test_mistakes_end_in_one_sentence_and_create_nothing(runner, tiny_copy, tmp_path, args, damage, message, code):
    if damage:
        damage(tiny_copy)
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(tiny_copy), "--out", str(out), *args])
    if "--strategy" in args and "magic" in args:  # typer's own usage error for an Enum value: status 2
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    else:
        assert message in _one_line_error(result, code)
    assert not out.exists()


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--force"]],
                         ids=["no-flag", "resume-of-a-foreign-folder", "force-on-a-foreign-folder"])
def test_existing_run_dir_is_never_overwritten(runner, tiny_textures, tmp_path, flags):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["finetune", str(tiny_textures), "--out", str(out), *flags])
    line = _one_line_error(result)
    assert str(out) in line and ("--resume" in line or "not a run directory" in line)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_a_finished_run_is_not_overwritten_and_force_replaces_it(runner, tiny_textures, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", str(tiny_textures), "--epochs", "2", "--no-augment", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    weights = (out / "model.safetensors").read_bytes()
    assert "already exists" in _one_line_error(runner.invoke(app, args))
    assert (out / "model.safetensors").read_bytes() == weights
    again = runner.invoke(app, [*args, "--resume"])  # nothing left to do: the metrics are reported
    assert again.exit_code == 0 and "already complete" in again.output
    assert runner.invoke(app, [*args, "--force", "--seed", "1"]).exit_code == 0
    assert (out / "model.safetensors").read_bytes() != weights


def test_python_api_raises_zoo_error(tiny_textures, tmp_path):
    with pytest.raises(UsageError, match="Unknown strategy 'magic'"):
        finetune(tiny_textures, strategy="magic", out=tmp_path / "run")
    with pytest.raises(ZooError, match="Unknown balance mode"):
        finetune(tiny_textures, balance="fair", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
