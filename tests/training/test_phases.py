"""`finetune`'s phases, each run on its own: resolve, load data, plan and recipe, prepare, evaluate."""
import json
from pathlib import Path

import pytest
import torch

from zoo.errors import ZooError
from zoo.thresholds import SIZE_THRESHOLD
from zoo.training.finetune import evaluate, prepare_run_dir
from zoo.training.fit import FitResult
from zoo.training.options import FinetuneOptions, resolve
from zoo.training.recipe import TrainingData, load_data, make_plan, make_recipe, run_config


def test_resolve_settles_the_run_directory_without_touching_it(tiny_textures, tmp_path):
    out = tmp_path / "run"
    run = resolve(FinetuneOptions(tiny_textures, strategy="partial", out=out))
    assert run.state == "new" and run.out == out and not out.exists()
    assert run.strategy.name == "partial" and run.advice is None and run.requested_strategy == "partial"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match="--resume"):
        resolve(FinetuneOptions(tiny_textures, out=out))
    with pytest.raises(ZooError, match="not a run directory"):
        resolve(FinetuneOptions(tiny_textures, out=out, force=True))
    assert (out / "notes.txt").read_text() == "mine"


def test_resolve_asks_the_advisor_only_where_the_user_left_the_choice(tiny_textures, tmp_path, monkeypatch):
    import zoo.advisor.recommend

    def refuse(*args, **kwargs):
        raise AssertionError("the advisor was asked")

    monkeypatch.setattr(zoo.advisor.recommend, "advise", refuse)
    run = resolve(FinetuneOptions(tiny_textures, strategy="svm", layer="stage4", out=tmp_path / "a"))
    assert run.options.layer == "stage4" and run.advice is None
    with pytest.raises(AssertionError, match="advisor"):
        resolve(FinetuneOptions(tiny_textures, strategy="auto", out=tmp_path / "b"))


def test_load_data_decodes_every_image_once_and_skips_unreadable_ones(tiny_copy, tmp_path):
    (tiny_copy / "train" / "brick" / "broken.png").write_bytes(b"not an image")
    data = load_data(resolve(FinetuneOptions(tiny_copy, out=tmp_path / "run")))
    assert (len(data.train), len(data.val)) == (15, 6)
    assert [s["path"] for s in data.skipped] == [str(tiny_copy / "train" / "brick" / "broken.png")]
    assert data.counts(data.train) == [5, 5, 5]


def _skewed(data: TrainingData, keep_per_class: list[int]) -> TrainingData:
    train = [r for c, n in enumerate(keep_per_class) for r in [r for r in data.train if r.label == c][:n]]
    return TrainingData(data.folder, data.preprocess, train, data.val, data.skipped)


def test_the_recipe_follows_the_shared_thresholds_and_the_strategy(tiny_textures, tmp_path):
    run = resolve(FinetuneOptions(tiny_textures, strategy="head", out=tmp_path / "run"))
    data = _skewed(load_data(run), [5, 2, 1])
    plan = make_plan(run, data)
    recipe = make_recipe(run, data, plan)
    assert len(data.train) <= SIZE_THRESHOLD and recipe.augment  # small data: augmentation on
    assert recipe.balance == "loss" and recipe.class_weights == pytest.approx([8 / 15, 8 / 6, 8 / 3])
    assert recipe.lr == run.strategy.default_lr and recipe.backbone_lr == 0.0  # head: nothing pretrained trains
    assert recipe.on_features and recipe.augment_views == 4 and recipe.epochs == run.strategy.default_epochs
    config = run_config(run, data, plan, recipe)
    assert config["data"]["train_counts"] == {"brick": 5, "grass": 2, "gravel": 1}
    assert config["requested_strategy"] == "head" and config["feature_cache"]


def test_prepare_then_evaluate_write_what_the_run_needs(tiny_textures, tmp_path):
    run = resolve(FinetuneOptions(tiny_textures, strategy="head", out=tmp_path / "run"))
    data = load_data(run)
    plan = make_plan(run, data)
    config = run_config(run, data, plan, make_recipe(run, data, plan))
    prepare_run_dir(run, config, data.classes)
    assert json.loads((run.out / "labels.json").read_text()) == data.classes
    assert json.loads((run.out / "config.json").read_text())["strategy"] == "head"
    logits = torch.nn.functional.one_hot(torch.tensor([r.label for r in data.val]), 3).float()
    metrics = evaluate(data, plan, FitResult([{"seconds": 1.0}], logits, None), epochs=1, started=0.0)
    assert metrics["accuracy"] == 1.0 and metrics["epochs"] == 1 and metrics["images"]["val"] == len(data.val)
    assert Path(run.out).is_dir() and not (run.out / "model.safetensors").exists()
