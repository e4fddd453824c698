"""The quadrant rule, driven by measured size and similarity (docs/architecture.md explains the rule)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.advisor.measure import Probe, probe, probe_sample
from zoo.backbones import create_model, get_spec
from zoo.data.folder import ImageFolderData, load_image_folder
from zoo.log import get_logger
from zoo.thresholds import IMBALANCE_THRESHOLD, SIZE_THRESHOLD, is_skewed, is_small
from zoo.training.strategies import BACKBONE_LR_FACTOR, get_strategy

log = get_logger(__name__)

# Scales of the similarity components. They were set so that real ImageNet validation photos score
# near 1 (BatchNorm KL 0.09, confidence 0.71 with efficientnet_lite0) and the components fall as data
# moves away from natural photos; see the README's quadrant guide for measured examples.
BN_KL_SCALE = 0.5          # score = exp(-KL / scale)
CONFIDENCE_REFERENCE = 0.7  # score = min(1, confidence / reference)
WEIGHTS = {"batchnorm": 0.4, "confidence": 0.3, "depth": 0.3}
SIMILARITY_THRESHOLD = 0.5

QUADRANTS = {
    ("large", "dissimilar"): ("Q1", "full"),
    ("large", "similar"): ("Q2", "partial"),
    ("small", "dissimilar"): ("Q3", "svm"),
    ("small", "similar"): ("Q4", "head"),
}


@dataclass
class Advice:
    model: str
    images: int
    classes: int
    smallest_class: int
    largest_class: int
    imbalance_ratio: float
    size: str  # "large" | "small"
    size_threshold: int
    similarity: float
    similar: bool
    components: dict[str, float | None]
    stage_accuracy: dict[str, float]
    quadrant: str
    strategy: str
    freeze_until: str | None
    layer: str | None
    lr_backbone: float
    lr_head: float
    augment: bool
    balance: str
    reasons: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def similarity_score(p: Probe) -> tuple[float, dict[str, float | None]]:
    """Weighted mean of the available components, each in [0, 1]."""
    comp: dict[str, float | None] = {"batchnorm_kl": p.bn_kl, "source_confidence": p.source_confidence}
    scores: dict[str, float] = {}
    if p.bn_kl is not None:
        scores["batchnorm"] = math.exp(-p.bn_kl / BN_KL_SCALE)
    if p.source_confidence is not None:
        scores["confidence"] = min(1.0, p.source_confidence / CONFIDENCE_REFERENCE)
    if p.stage_accuracy:
        last = list(p.stage_accuracy.values())[-1]
        scores["depth"] = last / max(max(p.stage_accuracy.values()), 1e-9)
    for k, v in scores.items():
        comp[f"{k}_score"] = round(v, 4)
    total = sum(WEIGHTS[k] for k in scores)
    if not total:
        return 0.5, comp
    return sum(WEIGHTS[k] * v for k, v in scores.items()) / total, comp


def best_earlier_layer(stage_accuracy: dict[str, float], stages: list[str]) -> str:
    """The stage whose pooled activations separate the classes best, preferring earlier on ties."""
    candidates = [s for s in stages[:-1] if s in stage_accuracy] or stages
    best = max(stage_accuracy.get(s, 0.0) for s in candidates)
    return next(s for s in candidates if stage_accuracy.get(s, 0.0) >= best - 0.005)


STRATEGY_REASONS = {
    "full": "plenty of data unlike the source: train the whole network, pretrained layers at a smaller rate",
    "partial": "plenty of similar data: keep the generic early stages frozen, adapt the later ones",
    "svm": "few images unlike the source: late features are too source-specific and fine-tuning would "
           "overfit, so a linear classifier on {layer} activations (best separability of the earlier stages)",
    "head": "few images like the source: the pretrained features already fit, train only a new classifier",
}


def _reasons(n: int, size: str, size_threshold: int, score: float, similar: bool, strategy: str, layer: str | None,
             lr_head: float, lr_backbone: float, imbalance: float, balance: str) -> dict[str, str]:
    rates = ("none: scikit-learn fits the classifier, its regularisation C chosen by cross-validation"
             if strategy == "svm" else f"new layers {lr_head:g}, pretrained layers {lr_backbone:g}"
             + (" (frozen)" if lr_backbone == 0 else " (10x smaller, so pretrained weights move gently)"))
    return {
        "size": f"{n} training images {'>' if size == 'large' else '<='} the threshold of {size_threshold}: {size}",
        "similarity": f"score {score:.2f} {'>=' if similar else '<'} {SIMILARITY_THRESHOLD} "
                      f"(BatchNorm statistics, source-classifier confidence, separability by depth): "
                      f"{'similar' if similar else 'dissimilar'} to the pretraining data",
        "strategy": STRATEGY_REASONS[strategy].format(layer=layer),
        "learning_rates": rates,
        "augmentation": "on: small data needs more views" if size == "small" else
                        "off: enough real variation in the data",
        "balance": (f"classes are skewed {imbalance:.1f}:1 (at least {IMBALANCE_THRESHOLD:g}:1), so weight the loss"
                    if balance == "auto" else f"classes are balanced enough ({imbalance:.1f}:1)"),
    }


def _measure(data: ImageFolderData, model: str, per_class: int, max_images: int, seed: int) -> Probe:
    spec = get_spec(model)
    per_class = max(2, min(per_class, max_images // len(data.classes)))
    net = create_model(model, num_classes=None, pretrained=True)
    measured = probe(net, not spec.notes, probe_sample(data, per_class, seed), spec.preprocess_config(), seed)
    if measured.unreadable:
        log.warning(f"{len(measured.unreadable)} unreadable image(s) skipped, e.g. {measured.unreadable[0]}")
    return measured


def advise(data_dir: Path | str | ImageFolderData, model: str = "efficientnet_lite0",
           size_threshold: int = SIZE_THRESHOLD, per_class: int = 30, max_images: int = 300,
           seed: int = 0) -> Advice:
    data = data_dir if isinstance(data_dir, ImageFolderData) else load_image_folder(data_dir, seed=seed)
    spec = get_spec(model)
    counts = list(data.class_counts("train").values())
    n = len(data.train)
    imbalance = max(counts) / max(min(counts), 1)
    measured = _measure(data, model, per_class, max_images, seed)
    score, components = similarity_score(measured)
    size = "small" if is_small(n, size_threshold) else "large"
    similar = score >= SIMILARITY_THRESHOLD
    quadrant, strategy = QUADRANTS[(size, "similar" if similar else "dissimilar")]
    layer = best_earlier_layer(measured.stage_accuracy, list(spec.stages)) if strategy == "svm" else None
    # The strategy's own defaults, which `--strategy auto` then uses: one recipe, measured by
    # benchmarks/strategies.py. For svm the "rate" is scikit-learn's C, chosen by cross-validation.
    lr_head = get_strategy(strategy).default_lr if strategy != "svm" else 0.0
    lr_backbone = lr_head * BACKBONE_LR_FACTOR if strategy in ("full", "partial") else 0.0
    balance = "auto" if is_skewed(counts) else "none"
    reasons = _reasons(n, size, size_threshold, score, similar, strategy, layer, lr_head, lr_backbone, imbalance,
                       balance)
    return Advice(model=model, images=n, classes=len(data.classes), smallest_class=min(counts),
                  largest_class=max(counts), imbalance_ratio=round(imbalance, 3), size=size,
                  size_threshold=size_threshold, similarity=round(score, 4), similar=similar, components=components,
                  stage_accuracy={k: round(v, 4) for k, v in measured.stage_accuracy.items()}, quadrant=quadrant,
                  strategy=strategy, freeze_until=spec.default_freeze_until if strategy == "partial" else None,
                  layer=layer, lr_backbone=lr_backbone, lr_head=lr_head, augment=size == "small", balance=balance,
                  reasons=reasons, unreadable=measured.unreadable)
