"""What each strategy may change: after training, compare every tensor with the pretrained one."""
import pytest
import torch

from zoo.backbones import create_model, get_spec
from zoo.run_dir import load_run
from zoo.training.finetune import finetune
from zoo.training.strategies import apply_freeze, get_strategy, param_groups, train_mode

MODEL = "efficientnet_lite0"


def _pretrained_state() -> dict:
    return create_model(MODEL, num_classes=3, pretrained=True).state_dict()


def _stage_of(key: str) -> str | None:
    return key.split(".")[1] if key.startswith("stages.") else None


@pytest.mark.parametrize("cache", [True, False], ids=["cached-features", "images"])
def test_head_leaves_every_backbone_tensor_bit_identical(tiny_textures, tmp_path, cache):
    # Without the cache the backbone runs in every training step: its BatchNorm must stay in eval mode.
    finetune(tiny_textures, strategy="head", epochs=2, augment=True, views=2, cache=cache, batch_size=8,
             out=tmp_path / "run")
    trained, ref = load_run(tmp_path / "run").model.state_dict(), _pretrained_state()
    for key, value in trained.items():
        if key.startswith("classifier."):
            assert not torch.equal(value, ref[key]), f"{key} did not train"
        else:
            assert torch.equal(value, ref[key]), f"{key} changed under the head strategy"


@pytest.mark.parametrize("strategy,freeze_until", [("partial", "stage4"), ("full", None)])
def test_partial_and_full_change_exactly_the_unfrozen_stages(tiny_textures, tmp_path, strategy, freeze_until):
    finetune(tiny_textures, strategy=strategy, freeze_until=freeze_until, epochs=1, augment=True, batch_size=8,
             out=tmp_path / "run")
    trained, ref = load_run(tmp_path / "run").model.state_dict(), _pretrained_state()
    stages = get_spec(MODEL).stages
    frozen = set(stages[: stages.index(freeze_until) + 1]) if freeze_until else set()
    unchanged = {k for k in trained if torch.equal(trained[k], ref[k])}
    for key in trained:
        if _stage_of(key) in frozen:
            assert key in unchanged, f"{key} is in a frozen stage but changed"
        else:
            # Parameters, BatchNorm running statistics and batch counters alike.
            assert key not in unchanged, f"{key} is trainable but did not change"
    assert frozen == {s for s in stages if all(k in unchanged for k in trained if _stage_of(k) == s)}


def test_frozen_batchnorm_stays_in_eval_mode_and_pretrained_weights_learn_slower():
    model = create_model(MODEL, num_classes=4, pretrained=False)
    spec = get_spec(MODEL)
    plan = get_strategy("partial").plan(model, spec, "stage2")
    apply_freeze(plan)
    train_mode(plan)
    bn = {n: m.training for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert all(not t for n, t in bn.items() if _stage_of(n) in {"stem", "stage1", "stage2"})
    assert all(t for n, t in bn.items() if _stage_of(n) not in {"stem", "stage1", "stage2"})
    assert not any(p.requires_grad for p in model.stages["stage2"].parameters())
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, backbone_lr=1e-4)}
    assert groups["backbone"]["lr"] < groups["classifier"]["lr"]
    assert {id(p) for p in groups["classifier"]["params"]} == {id(p) for p in model.classifier.parameters()}
    assert not any(p.requires_grad is False for p in groups["backbone"]["params"])


def test_old_classifier_is_replaced_by_one_sized_to_the_classes(tiny_textures, tmp_path):
    finetune(tiny_textures, strategy="head", epochs=1, augment=False, out=tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.model.classifier.out_features == 3 == run.config["num_classes"]
    assert run.config["layer"] is None and run.config["trainable_parameters"]["names"] == ["classifier.weight",
                                                                                           "classifier.bias"]
