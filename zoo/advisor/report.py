"""Human-readable advice: the figures used, the candidates measured, the quadrant, and the pick with its reasons."""
from __future__ import annotations

from zoo.advisor.advice import Advice


def candidate_lines(a: Advice) -> list[str]:
    """The candidates table: strategy, layer, held-out accuracy +- std, what measuring it cost, how."""
    rows = [("strategy", "layer", "accuracy", "seconds", "measured by")]
    for c in a.candidates:
        rows.append((c["strategy"], c["layer"] or "-", f"{100 * c['accuracy']:.1f}% ± {100 * c['std']:.1f}",
                     f"{c['seconds']:.1f}", c["how"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    pick = a.evidence.get("pick", {})
    lines = []
    for r in rows:
        mark = "  <- pick" if (r[0], r[1]) == (pick.get("strategy"), pick.get("layer") or "-") else ""
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + f"  {r[4]}{mark}")
    return lines


def advice_lines(a: Advice) -> list[str]:
    c = a.components
    lines = [
        f"Dataset: {a.images} training images, {a.classes} classes (smallest {a.smallest_class}, "
        f"largest {a.largest_class}, imbalance {a.imbalance_ratio:.2f}:1)",
        f"Similarity to {a.model}'s pretraining data: {a.similarity:.2f}",
    ]
    if a.image_size:
        lines.insert(1, f"Image size: {a.image_size['size']} px ({a.image_size['reason']})")
    if c.get("batchnorm_kl") is not None:
        lines.append(f"  BatchNorm statistics: mean KL {c['batchnorm_kl']:.3f} -> score {c['batchnorm_score']:.2f}")
    if c.get("source_confidence") is not None:
        lines.append(f"  source classifier confidence: {c['source_confidence']:.3f} "
                     f"-> score {c['confidence_score']:.2f}")
    if (textured := c.get("textured_pixels")) is not None:
        lines.append(f"  textured pixels (not flat fill): {100 * textured:.0f}% "
                     f"-> score {c['pixels_score']:.2f}")
    if a.stage_accuracy:
        accs = ", ".join(f"{k} {v:.2f}" for k, v in a.stage_accuracy.items())
        lines.append(f"  linear separability by stage (held-out accuracy, reported, not scored): {accs}")
    lines.append(f"Quadrant (the prior): {a.quadrant} ({a.size}, {'similar' if a.similar else 'dissimilar'}) "
                 f"-> {a.prior_strategy}")
    lines.append("Candidates, scored on held-out parts of the training split (the validation split is not used):")
    lines += candidate_lines(a)
    extra = f" --freeze-until {a.freeze_until}" if a.freeze_until else f" --layer {a.layer}" if a.layer else ""
    lines.append(f"Recommendation: zoo finetune DATA --model {a.model} --strategy {a.strategy}{extra}")
    for key, reason in a.reasons.items():
        lines.append(f"  {key}: {reason}")
    return lines
