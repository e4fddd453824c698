"""--warm-head: full and partial fit the new classifier on frozen features before fine-tuning
(zoo.training.warm_head); off by default.

The runs are real (tiny textures sample, real backbone, real feature extraction); a wrapper around
warm_start only looks at the model at the moment fine-tuning begins.
"""
import json

import pytest
import torch

import zoo.training.fit as fitting
from zoo.backbones import create_model
from zoo.errors import UsageError
from zoo.training.finetune import finetune
from zoo.training.options import FinetuneOptions, resolve
from zoo.training.recipe import check_resumable, load_data, make_plan, make_recipe
from zoo.training.replay import replay_options

OPTIONS = dict(strategy="partial", freeze_until="stage6", epochs=1, batch_size=8, seed=3, log="none", warm_head=True)


def _spy_on_warm_start(monkeypatch):
    seen = {}
    real = fitting.warm_start

    def spy(run, data, plan, recipe):
        seen["before"] = {k: v.clone() for k, v in plan.model.state_dict().items()}
        report = real(run, data, plan, recipe)
        seen["after"] = {k: v.clone() for k, v in plan.model.state_dict().items()}
        seen["report"] = report
        return report

    monkeypatch.setattr(fitting, "warm_start", spy)
    return seen


def test_fine_tuning_starts_from_a_classifier_fitted_on_frozen_features(tiny_textures, tmp_path, monkeypatch):
    seen = _spy_on_warm_start(monkeypatch)
    finetune(tiny_textures, out=tmp_path / "run", **OPTIONS)
    before, after, report = seen["before"], seen["after"], seen["report"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}, "only the classifier may move before fine-tuning"
    pretrained = create_model("efficientnet_lite0", num_classes=3, pretrained=True).state_dict()
    assert all(torch.equal(after[k], pretrained[k]) for k in after if not k.startswith("classifier."))
    # the fitted probe separates this easy sample on its training images, with the run's augmented views
    assert report["views"] == 4 and report["epochs"] == 30 and report["train_accuracy"] >= 0.9
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["warm_head"] is True and config["augment_views"] == 4
    assert config["warm_head_probe"]["val_accuracy"] == report["val_accuracy"]


@pytest.mark.parametrize(("options", "warms"), [
    (dict(strategy="full"), True), (dict(strategy="partial"), True), (dict(strategy="full", warm_head=False), False),
    (dict(strategy="head"), False), (dict(strategy="svm", layer="stage5"), False),
    (dict(strategy="full", pretrained=False), False),
], ids=["full", "partial", "full-cold", "head", "svm", "random-weights"])
def test_only_pretrained_layers_that_fine_tune_get_a_probe_first(options, warms, tiny_textures, tmp_path):
    """The recipe's decision, read without training: nothing to warm where no pretrained layer fine-tunes."""
    assert FinetuneOptions(tiny_textures).warm_head is False, "off by default (the README's measurements)"
    run = resolve(FinetuneOptions(tiny_textures, out=tmp_path / "run", **{"warm_head": True, "log": "none", **options}))
    data = load_data(run)
    recipe = make_recipe(run, data, make_plan(run, data))
    assert recipe.warm_head is warms
    assert (recipe.augment_views == 4) is (warms or recipe.on_features)  # the probe's views are head's


def test_runs_recorded_before_the_option_replay_and_resume_cold():
    old = {"model": "efficientnet_lite0", "strategy": "full", "seed": 0, "preprocess": {"input_size": 224}}
    assert replay_options(old)["warm_head"] is False
    assert replay_options({**old, "warm_head": True})["warm_head"] is True
    fingerprint = {"data": {"fingerprint": "f", "dir": "d"}}
    check_resumable({**old, **fingerprint}, {**old, **fingerprint, "warm_head": False}, "out")
    with pytest.raises(UsageError, match="warm_head=False, not True"):
        check_resumable({**old, **fingerprint}, {**old, **fingerprint, "warm_head": True}, "out")
