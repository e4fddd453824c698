"""What `advise` returns: the pick, the prior, every measured candidate and the reasons, as a report and as JSON
(config.json of an `auto` run records it). Built from the advisor's findings (zoo.advisor.recommend)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from zoo.advisor.similarity import SIMILARITY_THRESHOLD
from zoo.thresholds import IMBALANCE_THRESHOLD, is_skewed
from zoo.training.strategies import BACKBONE_LR_FACTOR, get_strategy

if TYPE_CHECKING:  # recommend imports this module
    from zoo.advisor.recommend import AdviseSettings, Findings


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
    prior_strategy: str = ""  # what the quadrant rule alone would pick
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every measured candidate, best first
    evidence: dict[str, Any] = field(default_factory=dict)  # how the pick was made: reason, costs, budget
    image_size: dict[str, Any] = field(default_factory=dict)  # the size the evidence was measured at, and why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


STRATEGY_REASONS = {
    "full": "plenty of data unlike the source: train the whole network, pretrained layers at a smaller rate",
    "partial": "plenty of similar data: keep the generic early stages frozen, adapt the later ones",
    "svm": "few images unlike the source: late features are too source-specific and fine-tuning would "
           "overfit, so a linear classifier on {layer} activations",
    "head": "few images like the source: the pretrained features already fit, train only a new classifier",
}

def _reasons(f: Findings, s: AdviseSettings, lr_head: float, lr_backbone: float, balance: str) -> dict[str, str]:
    assert f.pick is not None
    strategy, similar = f.pick.strategy, f.similarity >= SIMILARITY_THRESHOLD
    rates = ("none: scikit-learn fits the classifier, its regularisation C chosen by cross-validation"
             if strategy == "svm" else f"new layers {lr_head:g}, pretrained layers {lr_backbone:g}"
             + (" (frozen)" if lr_backbone == 0 else " (10x smaller, so pretrained weights move gently)"))
    return {
        "size": f"{f.images} training images {'>' if f.size == 'large' else '<='} the threshold of "
                f"{s.size_threshold}: {f.size}",
        "similarity": f"score {f.similarity:.2f} {'>=' if similar else '<'} {SIMILARITY_THRESHOLD} "
                      f"(BatchNorm statistics, source-classifier confidence, share of textured pixels): "
                      f"{'similar' if similar else 'dissimilar'} to the pretraining data",
        "prior": f"the quadrant rule says {f.quadrant} -> {f.prior}: "
                 f"{STRATEGY_REASONS[f.prior].format(layer='an earlier stage')}",
        "evidence": f.reason,
        "pilots": f.pilot_reason,
        "learning_rates": rates,
        "augmentation": "on: small data needs more views" if f.augment else "off: enough real variation in the data",
        "balance": (f"classes are skewed {f.imbalance:.1f}:1 (at least {IMBALANCE_THRESHOLD:g}:1), so weight the loss"
                    if balance == "auto" else f"classes are balanced enough ({f.imbalance:.1f}:1)"),
    }


def build_advice(f: Findings, s: AdviseSettings, seconds: float) -> Advice:
    assert f.pick is not None and f.measured is not None and f.features is not None
    strategy = f.pick.strategy
    # The strategy's own defaults, which `--strategy auto` then uses; svm's "rate" is scikit-learn's C.
    lr_head = get_strategy(strategy).default_lr if strategy != "svm" else 0.0
    lr_backbone = lr_head * BACKBONE_LR_FACTOR if strategy in ("full", "partial") else 0.0
    balance = "auto" if is_skewed(f.counts) else "none"
    measured = f.candidates + f.pilots
    evidence = {"pick": f.pick.to_json(), "reason": f.reason, "prior": {"quadrant": f.quadrant, "strategy": f.prior},
                "validation_split": "not used: candidates are scored on held-out parts of the training split",
                "budget_minutes": round(f.budget_s / 60, 3), "views": f.features.views,
                "seconds": {**{step: round(t, 2) for step, t in f.seconds.items()},
                            "features_from_cache": f.features.from_cache,
                            "pilots": round(sum(c.seconds for c in f.pilots), 2), "total": round(seconds, 2)}}
    return Advice(model=f.model, images=f.images, classes=len(f.data.classes), smallest_class=min(f.counts),
                  largest_class=max(f.counts), imbalance_ratio=round(f.imbalance, 3), size=f.size,
                  size_threshold=s.size_threshold, similarity=round(f.similarity, 4),
                  similar=f.similarity >= SIMILARITY_THRESHOLD, components=f.components,
                  stage_accuracy={k: round(v, 4) for k, v in f.measured.stage_accuracy.items()},
                  quadrant=f.quadrant, strategy=strategy,
                  freeze_until=f.spec.default_freeze_until if strategy == "partial" else None,
                  layer=f.pick.layer if strategy == "svm" else None, lr_backbone=lr_backbone, lr_head=lr_head,
                  augment=f.augment, balance=balance, reasons=_reasons(f, s, lr_head, lr_backbone, balance),
                  unreadable=f.measured.unreadable, prior_strategy=f.prior,
                  candidates=[c.to_json() for c in sorted(measured, key=lambda c: -c.accuracy)], evidence=evidence,
                  image_size=f.image_size)
