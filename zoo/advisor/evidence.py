"""Evidence for `auto`: candidate classifiers scored by grouped cross-validation on the training split.

Every cheap candidate is a linear classifier on pooled activations of the frozen pretrained backbone:
the new head on the bottleneck (what `head` trains) and a linear probe on each earlier stage (what
`svm` fits). One pass of the backbone over the training images, in the very views the strategies
train on, yields all of them, and the features are stored under the strategies' own cache keys: the
strategy `auto` picks reads them back instead of running the backbone again. Augmented views of one
image always fall in the same fold, and a held-out image is scored in the inference view, as it will
be classified once deployed. The validation split is never read here: it only reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.backbones import BackboneSpec, ZooModel
from zoo.preprocess import PreprocessConfig
from zoo.training.datasets import ImageRecord
from zoo.training.feature_cache import FeatureCache, Layer, cached_layer_features, default_cache_dir, training_views
from zoo.training.linear_probe import cross_validate_many

# Two candidates are a tie, which the quadrant rule breaks, when the gap between their held-out scores
# is within Z standard errors of that gap: the usual two-sided 5% level. The best of many candidates is
# chosen on the same images it is scored on (a winner's curse), so a gap the data cannot tell from
# noise is no reason to overrule the prior. TIE is the floor: half a point is never worth overruling it.
Z = 1.96
TIE = 0.005
# On large data the probes are scored on a subset: their ranking is settled long before the
# classifier has seen every image, and a CV fit on 4,000 x 4 views would cost more than a pilot.
MAX_PROBE_IMAGES = 2000


@dataclass(frozen=True)
class Candidate:
    """One way to train, and how well it did on held-out training images."""

    strategy: str  # head, svm, partial or full
    layer: str | None  # svm: the tapped stage
    accuracy: float  # mean held-out accuracy on the training split
    std: float  # across folds (a pilot's single split: the binomial standard error)
    seconds: float  # what measuring it cost
    how: str  # "5-fold grouped CV, C=0.1" or "pilot: ..."
    c: float | None = None  # probes: the cross-validated C, which the svm strategy then reuses
    cv_accuracy: dict[float, float] | None = None  # probes: mean held-out accuracy per C
    se: float | None = None  # standard error of `accuracy` (default: std, as for a pilot)
    # probes: each image's held-out correctness, for paired comparisons; not reported
    held_out: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("held_out")
        return out


def gap_margin(a: Candidate, b: Candidate) -> float:
    """How far apart two candidates' scores must be to count as different.

    Scored on the same images, the gap's standard error comes from the per-image differences (a paired
    comparison, much tighter than the folds' spread); otherwise the two errors add."""
    if a.held_out is not None and b.held_out is not None and len(a.held_out) == len(b.held_out) > 1:
        d = np.asarray(a.held_out) - np.asarray(b.held_out)
        se = float(d.std(ddof=1)) / math.sqrt(len(d))
    else:
        se = math.hypot(a.std if a.se is None else a.se, b.std if b.se is None else b.se)
    return max(TIE, Z * se)


def probe_layers(spec: BackboneSpec) -> list[Layer]:
    """Every earlier stage (svm candidates) and the bottleneck (the head candidate)."""
    return [*spec.stages[:-1], None]


@dataclass
class ProbeFeatures:
    features: dict[Layer, list[torch.Tensor]]  # one [N, D] tensor per view, per layer
    labels: torch.Tensor
    views: int
    from_cache: int  # layer-view entries read back instead of computed
    # What the passes cost to compute, timed or as their cache entries record: the same on a first and a
    # later run over the same images (the wall time is the advisor's "features" step). None when an entry
    # read back does not say.
    compute_seconds: float | None


def probe_features(model: ZooModel, model_name: str, records: list[ImageRecord], cfg: PreprocessConfig,
                   layers: list[Layer], *, views: int | None, seed: int, cache_dir: Path | None, use_cache: bool,
                   batch_size: int, workers: int) -> ProbeFeatures:
    """Pooled activations at every layer for each training view the strategies will use, cached."""
    cache = FeatureCache(cache_dir or default_cache_dir()) if use_cache else None
    per_view = training_views(views)
    features: dict[Layer, list[torch.Tensor]] = {layer: [] for layer in layers}
    hits = 0
    compute: float | None = 0.0
    for i, v in enumerate(per_view):
        what = "evidence: train features" + (f", view {i + 1}/{len(per_view)}" if len(per_view) > 1 else "")
        found, hit, cost = cached_layer_features(model, records, cfg, model_name=model_name, layers=layers, view=v,
                                                 seed=seed, cache=cache, batch_size=batch_size, workers=workers,
                                                 description=what)
        hits += hit
        compute = None if compute is None or cost is None else compute + cost
        for layer, f in found.items():
            features[layer].append(f)
    return ProbeFeatures(features, torch.tensor([r.label for r in records]), len(per_view), hits, compute)


def stratified_subset(labels: list[int], n: int, seed: int) -> list[int]:
    """At most about n indices, every class kept in proportion (at least two each), seeded, in order."""
    if len(labels) <= n:
        return list(range(len(labels)))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    picked: list[int] = []
    for c in sorted(set(labels)):
        mine = [i for i in order if labels[i] == c]
        picked += mine[: max(2, round(n * len(mine) / len(labels)))]
    return sorted(picked)


def score_probes(probe: ProbeFeatures, class_weights: list[float] | None, seed: int) -> list[Candidate]:
    """Each layer's linear classifier, cross-validated (C chosen per layer, as the svm strategy does), all
    on the same folds. A candidate's seconds are its share of the one parallel pass that scores them all."""
    keep = torch.tensor(stratified_subset(probe.labels.tolist(), MAX_PROBE_IMAGES, seed))
    labels = probe.labels[keep]
    tick = time.perf_counter()
    layers = list(probe.features)
    scored = cross_validate_many([[v[keep] for v in probe.features[layer]] for layer in layers], labels,
                                 class_weights, seed)
    share = (time.perf_counter() - tick) / max(1, len(layers))
    out = []
    for layer, cv in zip(layers, scored, strict=True):
        if cv is None:  # a class with a single image: nothing can be held out
            continue
        folds = len(next(iter(cv.fold_accuracy.values())))
        how = f"{folds}-fold grouped CV on {len(keep)} images x {probe.views} view(s), C={cv.best_c:g}"
        out.append(Candidate("head" if layer is None else "svm", layer, cv.accuracy, cv.std, share, how, cv.best_c,
                             cv.mean, se=cv.std / math.sqrt(folds), held_out=tuple(cv.best_correct.tolist())))
    return out


def choose(candidates: list[Candidate], prior: str) -> tuple[Candidate, str]:
    """The most accurate candidate. Those whose gap to it is within the noise (gap_margin) tie with it: among
    them the quadrant rule's strategy wins; otherwise the more accurate, then the earlier listed (an earlier
    stage: a smaller model to serve)."""
    top = max(candidates, key=lambda c: c.accuracy)
    near = [c for c in candidates if top.accuracy - c.accuracy <= gap_margin(top, c)]
    preferred = [c for c in near if c.strategy == prior]
    pick = max(preferred or near, key=lambda c: c.accuracy)
    where = f" on {pick.layer}" if pick.layer else ""
    others = len(near) - 1
    tied = (f"{others} other candidate(s) came within the noise of the best ({100 * top.accuracy:.1f}%: a gap under "
            f"{Z:g} standard errors of the per-image differences, or under {100 * TIE:.1f} points)")
    if others and preferred:
        return pick, (f"{pick.strategy}{where} scored {100 * pick.accuracy:.1f}%; {tied}, a tie the quadrant rule "
                      f"breaks in favour of {prior}")
    if others:
        return pick, (f"{pick.strategy}{where} scored {100 * pick.accuracy:.1f}%; {tied}, none of them the quadrant "
                      f"rule's {prior}: the most accurate is kept, the earliest stage on equal scores (the smallest "
                      "model to serve)")
    runner_up = max((c.accuracy for c in candidates if c is not pick), default=None)
    lead = f", {100 * (pick.accuracy - runner_up):.1f} points ahead of the next" if runner_up is not None else ""
    return pick, f"{pick.strategy}{where} scored best ({100 * pick.accuracy:.1f}% held out{lead}, beyond the noise)"
