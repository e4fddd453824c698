"""Human-readable advice: the figures used, the quadrant, and each recommendation with its reason."""
from __future__ import annotations

from zoo.advisor.recommend import Advice


def advice_lines(a: Advice) -> list[str]:
    c = a.components
    lines = [
        f"Dataset: {a.images} training images, {a.classes} classes (smallest {a.smallest_class}, "
        f"largest {a.largest_class}, imbalance {a.imbalance_ratio:.2f}:1)",
        f"Similarity to {a.model}'s pretraining data: {a.similarity:.2f}",
    ]
    if c.get("batchnorm_kl") is not None:
        lines.append(f"  BatchNorm statistics: mean KL {c['batchnorm_kl']:.3f} -> score {c['batchnorm_score']:.2f}")
    if c.get("source_confidence") is not None:
        lines.append(f"  source classifier confidence: {c['source_confidence']:.3f} "
                     f"-> score {c['confidence_score']:.2f}")
    if a.stage_accuracy:
        accs = ", ".join(f"{k} {v:.2f}" for k, v in a.stage_accuracy.items())
        lines.append(f"  linear separability by stage (3-fold CV accuracy): {accs}")
        lines.append(f"  -> depth score {c.get('depth_score', 0):.2f} (last stage vs the best stage)")
    lines.append(f"Quadrant: {a.quadrant} ({a.size}, {'similar' if a.similar else 'dissimilar'})")
    extra = f" --freeze-until {a.freeze_until}" if a.freeze_until else f" --layer {a.layer}" if a.layer else ""
    lines.append(f"Recommendation: zoo finetune DATA --model {a.model} --strategy {a.strategy}{extra}")
    for key, reason in a.reasons.items():
        lines.append(f"  {key}: {reason}")
    return lines
