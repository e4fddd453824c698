"""The similarity score: how close the data sits to the pretraining data, as one number in [0, 1].

It is the advisor's explanation and the quadrant rule's second axis, never the decision itself:
the weighted mean of three component scores, from how far the activation statistics sit from the
BatchNorm running statistics, how confident the source (ImageNet) classifier is, and how much of each
image is textured rather than flat fill (photographs are textured almost everywhere, rendered symbols
are not).

An earlier third component, how well the last stage separates the classes compared with the best
stage, scored 0.998 to 1.0 on all six sample sets, photographs and symbols alike, so it carried no
information and was replaced; separability by depth is still reported. Only the network-based
components ranked a set of emoji (colourful, near ImageNet's BatchNorm statistics) above grey face
photographs; the pixel component orders them, with a gap of about 0.7 on its own scale (benchmarks/
strategies.py prints the score of every set).
"""
from __future__ import annotations

import math
from pathlib import Path

from zoo.advisor.measure import Probe

# Scales of the similarity components. They were set so that real ImageNet validation photos score
# near 1 (BatchNorm KL 0.09, confidence 0.71 with efficientnet_lite0) and the components fall as data
# moves away from natural photos; see the README's quadrant guide for measured examples.
BN_KL_SCALE = 0.5          # score = exp(-KL / scale)
CONFIDENCE_REFERENCE = 0.7  # score = min(1, confidence / reference)
WEIGHTS = {"batchnorm": 0.4, "confidence": 0.3, "pixels": 0.3}
SIMILARITY_THRESHOLD = 0.5


def similarity_score(p: Probe) -> tuple[float, dict[str, float | None]]:
    """Weighted mean of the available components, each in [0, 1]."""
    comp: dict[str, float | None] = {"batchnorm_kl": p.bn_kl, "source_confidence": p.source_confidence}
    scores: dict[str, float] = {}
    if p.bn_kl is not None:
        scores["batchnorm"] = math.exp(-p.bn_kl / BN_KL_SCALE)
    if p.source_confidence is not None:
        scores["confidence"] = min(1.0, p.source_confidence / CONFIDENCE_REFERENCE)
    if p.textured_pixels is not None:
        comp["textured_pixels"] = p.textured_pixels
        scores["pixels"] = p.textured_pixels  # already a share in [0, 1]
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


def measure_similarity(data_dir: Path | str, model: str = "efficientnet_lite0", per_class: int = 30,
                       seed: int = 0) -> tuple[float, dict[str, float | None]]:
    """The similarity score and its components alone, on a class-balanced sample of the training images at
    the backbone's native size: what `advise` computes on its way (there from every training image, at the
    run's --image-size), without the evidence."""
    from zoo.advisor.measure import probe, probe_sample
    from zoo.advisor.pixels import mean_textured_fraction
    from zoo.backbones import create_model, get_spec
    from zoo.data.folder import load_image_folder

    data = load_image_folder(data_dir, seed=seed)
    spec = get_spec(model)
    sample = probe_sample(data, per_class, seed)
    measured = probe(create_model(model, num_classes=None, pretrained=True), not spec.notes, sample,
                     spec.preprocess_config(), seed)
    measured.textured_pixels = mean_textured_fraction([x.path for x in sample])
    return similarity_score(measured)
