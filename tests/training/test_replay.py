"""`zoo finetune --config RUN/config.json DATA_DIR` re-runs a configuration; flags given win."""
import json

import torch
from safetensors.torch import load_file

from zoo.cli import app

# partial with augmentation: the replay must carry the strategy, the frozen stages, the rates and the views.
FIRST = ["--strategy", "partial", "--freeze-until", "stage6", "--epochs", "2", "--augment", "--batch-size", "8",
         "--seed", "7", "--lr", "0.02", "--log", "none"]


def test_config_replays_a_run_bit_identically_and_flags_override_it(tiny_textures, tmp_path, runner):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    first = runner.invoke(app, ["finetune", str(tiny_textures), "--out", str(a), *FIRST])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["finetune", "--config", str(a / "config.json"), str(tiny_textures), "--out", str(b),
                                "--log", "none"])
    assert again.exit_code == 0, again.output
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    for key in ("strategy", "freeze_until", "epochs", "lr", "backbone_lr", "augment", "augment_views", "seed",
                "batch_size", "preprocess"):
        assert ca[key] == cb[key], key

    override = runner.invoke(app, ["finetune", "--config", str(a / "config.json"), str(tiny_textures), "--out",
                                   str(c), "--epochs", "1", "--seed", "3", "--log", "none"])
    assert override.exit_code == 0, override.output
    cc = json.loads((c / "config.json").read_text())
    assert (cc["epochs"], cc["seed"], cc["strategy"], cc["freeze_until"]) == (1, 3, "partial", "stage6")


def test_a_bad_config_file_ends_in_one_sentence(tiny_textures, tmp_path, runner):
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "broken.json").write_text("{not json")
    # a --config that names no file or the wrong file is a usage error (2); a damaged one fails the work (1)
    for path, message, code in ((tmp_path / "missing.json", "does not exist", 2),
                                (tmp_path / "broken.json", "is not valid JSON", 1),
                                (tmp_path / "notes.json", "is not the config.json of a `zoo finetune` run", 2)):
        result = runner.invoke(app, ["finetune", "--config", str(path), str(tiny_textures), "--out",
                                     str(tmp_path / "never")])
        assert result.exit_code == code and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()
