"""Transfer-learning strategies: which parts of the backbone stay frozen, and how fast the rest learns.

Every strategy keeps the transfer-learning rules: the old classifier is replaced by one sized to
the user's classes (done by `create_model(num_classes=...)`), pretrained weights learn with a
smaller rate than the new classifier, and frozen layers stay frozen including their BatchNorm
statistics. Strategies are registered by name, so a new one is one `register_strategy` call.
The module does not import torch when it loads: the CLI lists the registered names at start-up.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from zoo.backbones import BackboneSpec, ZooModel

# What `--strategy` takes besides the registered strategies: let the advisor choose.
AUTO = "auto"


@dataclass(frozen=True)
class Plan:
    """What a strategy decided for one model."""

    model: ZooModel  # the model that is trained and saved (a strategy may truncate it)
    frozen: tuple[str, ...]  # submodule names that never change: parameters and BatchNorm statistics
    freeze_until: str | None  # the last frozen stage, None when no stage is frozen
    layer: str | None = None  # the stage whose pooled activations feed the classifier; None: the bottleneck
    on_cached_features: bool = False  # only the classifier learns, so it can train on cached features


BACKBONE_LR_FACTOR = 0.1  # pretrained weights learn ten times slower than the new classifier


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    plan: Callable[[ZooModel, BackboneSpec, str | None], Plan]
    default_epochs: int
    default_lr: float  # for the new classifier; pretrained weights get a tenth of it
    takes_freeze_until: bool = False
    takes_layer: bool = False  # the plan's third argument is the tapped layer, not a freeze point
    # No pretrained layer stays frozen, so the whole network can adapt to a size other than the native one
    # (zoo.training.image_size: --image-size auto may then shrink small images' training size).
    every_layer_learns: bool = False


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    if strategy.name in STRATEGIES:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UsageError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}.") from None


def stages_up_to(model: ZooModel, stage: str) -> list[str]:
    if stage not in model.stages:
        raise UsageError(f"{stage!r} is not a stage of {model.name}: choose --freeze-until from "
                         f"{', '.join(model.stage_names)}.")
    return model.stage_names[: model.stage_names.index(stage) + 1]


def _full(model: ZooModel, spec: BackboneSpec, freeze_until: str | None) -> Plan:
    return Plan(model, frozen=(), freeze_until=None)


def _partial(model: ZooModel, spec: BackboneSpec, freeze_until: str | None) -> Plan:
    stage = freeze_until or spec.default_freeze_until
    return Plan(model, frozen=tuple(f"stages.{s}" for s in stages_up_to(model, stage)), freeze_until=stage)


def _head(model: ZooModel, spec: BackboneSpec, freeze_until: str | None) -> Plan:
    frozen = tuple(f"stages.{s}" for s in model.stage_names) + ("pre_logits",)
    return Plan(model, frozen=frozen, freeze_until=model.stage_names[-1], on_cached_features=True)


def _svm(model: ZooModel, spec: BackboneSpec, layer: str | None) -> Plan:
    """Q3: a linear classifier on globally pooled activations of an earlier stage; nothing else learns."""
    if layer is None or layer not in model.stages:
        raise UsageError(f"{layer!r} is not a stage of {model.name}: choose --layer from "
                         f"{', '.join(model.stage_names)}.")
    truncated = model.truncated(layer, model.num_classes)
    frozen = tuple(f"stages.{s}" for s in truncated.stage_names)
    return Plan(truncated, frozen=frozen, freeze_until=layer, layer=layer, on_cached_features=True)


register_strategy(Strategy("full", "train the whole network (pretrained part at a smaller learning rate)",
                           _full, default_epochs=10, default_lr=1e-3, every_layer_learns=True))
register_strategy(Strategy("partial", "freeze the early stages, train the later stages and a new classifier",
                           _partial, default_epochs=10, default_lr=1e-3, takes_freeze_until=True))
register_strategy(Strategy("head", "freeze the whole base, train a new classifier on cached bottleneck features",
                           _head, default_epochs=30, default_lr=3e-3))
register_strategy(Strategy("svm", "a linear classifier (scikit-learn, C by cross-validation) on an earlier stage's "
                           "pooled activations", _svm, default_epochs=1, default_lr=1.0, takes_layer=True))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def is_frozen(plan: Plan, name: str) -> bool:
    """Whether the parameter, buffer or submodule called `name` belongs to a frozen part."""
    return _under(name, plan.frozen)


def apply_freeze(plan: Plan) -> None:
    for name, p in plan.model.named_parameters():
        p.requires_grad_(not _under(name, plan.frozen))


def train_mode(plan: Plan) -> None:
    """model.train(), except frozen parts stay in eval mode so their BatchNorm statistics never move."""
    plan.model.train()
    for name in plan.frozen:
        plan.model.get_submodule(name).eval()


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def param_groups(model: ZooModel, lr: float, backbone_lr: float) -> list[dict[str, Any]]:
    """The new classifier learns at `lr`; trainable pretrained weights at the smaller `backbone_lr`."""
    new: list[nn.Parameter] = []
    pretrained: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (new if name.startswith("classifier.") else pretrained).append(p)
    groups = [{"params": new, "lr": lr, "name": "classifier"}]
    if pretrained:
        groups.append({"params": pretrained, "lr": backbone_lr, "name": "backbone"})
    return groups


def frozen_state(plan: Plan) -> dict[str, Any]:
    return {k: v for k, v in plan.model.state_dict().items() if _under(k, plan.frozen)}


def trainable_state(plan: Plan) -> dict[str, Any]:
    """Everything a checkpoint must hold: the state that training can change."""
    return {k: v for k, v in plan.model.state_dict().items() if not _under(k, plan.frozen)}
