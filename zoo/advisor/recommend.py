"""The advisor: measured size and similarity give the quadrant rule's prior; held-out evidence decides.

`advise` measures the dataset (size, imbalance, similarity to the pretraining data), then scores
candidate classifiers on the training split (zoo.advisor.evidence) and, where the cheap ones leave
headroom or the data is large, short fine-tuning pilots (zoo.advisor.pilot). It picks the best
measured candidate; the quadrant rule breaks ties and explains. docs/architecture.md has the rule.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from zoo.advisor.advice import Advice, build_advice
from zoo.advisor.evidence import (
    MAX_PROBE_IMAGES,
    Candidate,
    ProbeFeatures,
    choose,
    gap_margin,
    probe_features,
    probe_layers,
    score_probes,
    stratified_subset,
)
from zoo.advisor.measure import BatchNormInputStats, Probe, probe, probe_sample
from zoo.advisor.pilot import ASSUMED_FORWARD_RATE, PilotSetup, pilot_budget, run_pilot
from zoo.advisor.pixels import mean_textured_fraction
from zoo.advisor.similarity import SIMILARITY_THRESHOLD, similarity_score
from zoo.backbones import BackboneSpec, ZooModel, create_model, get_spec
from zoo.cpu_memory import heap_reuse
from zoo.data.folder import ImageFolderData, load_image_folder
from zoo.errors import ZooError
from zoo.hardware import CPU_FP32, Compute
from zoo.log import get_logger
from zoo.preprocess import PreprocessConfig
from zoo.thresholds import SIZE_THRESHOLD, is_small
from zoo.training.balance import class_weights, resolve_balance
from zoo.training.datasets import ImageRecord, at_size, scan_images
from zoo.training.image_size import choose_preprocess, parse_image_size
from zoo.training.strategies import get_strategy

log = get_logger(__name__)

QUADRANTS = {
    ("large", "dissimilar"): ("Q1", "full"),
    ("large", "similar"): ("Q2", "partial"),
    ("small", "dissimilar"): ("Q3", "svm"),
    ("small", "similar"): ("Q4", "head"),
}


# Small data gets a fine-tuning pilot only when the best frozen-feature candidate leaves more than
# 15 points of held-out error: above that, training the backbone on a few hundred images has not
# beaten the linear candidates on any dataset measured (benchmarks/strategies.py), and a pilot that
# loses costs more than the cheap strategy it then runs.
PILOT_BELOW = 0.85


@dataclass(frozen=True)
class AdviseSettings:
    """How `advise` gathers evidence; finetune passes its own values so the features it caches fit the run."""

    size_threshold: int = SIZE_THRESHOLD
    per_class: int = 30  # images per class for the similarity measurements
    max_images: int = 300  # for the pixel statistics (cheap: no network)
    # The network measurements, when the evidence pass ran on ONNX Runtime (no torch forward to hook): at up to
    # 300 images their torch forward passes cost as much as the evidence itself. On the six sample sets, 32
    # images (at least one a class) in the run's autocast precision moved the similarity score by 0.001 to
    # 0.013 from 30 images a class in fp32, far less than the gaps between the sets around the 0.5 threshold.
    similarity_images: int = 32
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.0  # held out before anything is measured: the test split never advises
    augment: bool | None = None  # default: on for small data, as finetune decides
    views: int = 4  # augmented views per image, as finetune caches them
    budget_minutes: float | None = None  # None: DEFAULT_BUDGET_MINUTES on large data, SMALL_PILOT_SHARE on small
    cache_dir: Path | None = None
    use_cache: bool = True
    batch_size: int = 32
    workers: int = 0
    balance: str = "auto"
    compute: Compute = CPU_FP32  # where the evidence pass and the pilots run (finetune passes its own)
    image_size: str = "auto"  # as finetune's --image-size, so the cached features fit the run


@dataclass
class Findings:
    """Everything `advise` measured, in the order it measured it."""

    model: str
    spec: BackboneSpec
    data: ImageFolderData
    counts: list[int]
    size: str
    augment: bool
    preprocess: PreprocessConfig
    image_size: dict[str, Any] = field(default_factory=dict)
    measured: Probe | None = None
    similarity: float = 0.5
    components: dict[str, float | None] = field(default_factory=dict)
    quadrant: str = ""
    prior: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    features: ProbeFeatures | None = None
    records: list[ImageRecord] = field(default_factory=list)
    pilots: list[Candidate] = field(default_factory=list)
    pilot_reason: str = ""
    budget_s: float = 0.0  # what the pilots were given
    pick: Candidate | None = None
    reason: str = ""
    unreadable: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # what each step cost, reported with the evidence

    @property
    def images(self) -> int:
        return len(self.data.train)

    @property
    def imbalance(self) -> float:
        return max(self.counts) / max(min(self.counts), 1)


@contextlib.contextmanager
def _timed(f: Findings, step: str) -> Iterator[None]:
    tick = time.perf_counter()
    try:
        yield
    finally:
        f.seconds[step] = f.seconds.get(step, 0.0) + time.perf_counter() - tick


def _measure_similarity(f: Findings, net: ZooModel, s: AdviseSettings) -> None:
    """BatchNorm shift and source confidence on a class-balanced sample (separability comes from the evidence).

    Only needed when the evidence pass ran no torch forward pass to hook: its features came from the cache or
    from ONNX Runtime."""
    per_class = max(1, min(s.per_class, s.similarity_images // len(f.data.classes)))
    with s.compute.autocast():
        f.measured = probe(net, not f.spec.notes, probe_sample(f.data, per_class, s.seed), f.preprocess, s.seed)


def _readable_records(f: Findings, s: AdviseSettings) -> list[ImageRecord]:
    """The training images that decode, at the run's size; one sentence when a class has none."""
    records, skipped = scan_images(f.data.train, f.preprocess, "evidence: checking train images")
    unreadable = [f"{bad['path']}: {bad['reason']}" for bad in skipped]
    if unreadable:
        log.warning(f"{len(unreadable)} unreadable image(s) skipped, e.g. {unreadable[0]}")
    if not records:
        raise ZooError("None of the training images could be read: check the files with `zoo data inspect`.")
    missing = sorted(set(range(len(f.data.classes))) - {r.label for r in records})
    if missing:
        raise ZooError(f"Class {f.data.classes[missing[0]]!r} has no readable training image: add images to it or "
                       "check the files with `zoo data inspect`.")
    f.unreadable = unreadable
    f.preprocess, f.image_size = choose_preprocess(f.preprocess, s.image_size, [min(r.stored) for r in records])
    return at_size(records, f.preprocess)


def _score_cheap_candidates(f: Findings, net: ZooModel, s: AdviseSettings) -> None:
    """Every frozen-feature candidate, cross-validated on the training split."""
    with _timed(f, "scan"):
        records = probed = _readable_records(f, s)
    if f.size == "large":  # the pilots decide there; the probes only need a fair sample
        keep = stratified_subset([r.label for r in records], MAX_PROBE_IMAGES, s.seed)
        probed = [records[i] for i in keep]
    f.records = records
    # The similarity measurements ride along the evidence pass when torch runs it: BatchNorm input statistics
    # over one view of every image, and the source classifier's confidence on the bottleneck features.
    stats = BatchNormInputStats(net, max_images=len(probed))
    try:
        with _timed(f, "features"):
            f.features = probe_features(net, f.model, probed, f.preprocess, probe_layers(f.spec),
                                        views=s.views if f.augment else None, seed=s.seed, cache_dir=s.cache_dir,
                                        use_cache=s.use_cache, batch_size=s.batch_size, workers=s.workers)
    finally:
        kl = stats.mean_kl()
    with _timed(f, "similarity"):
        if kl is None:  # no torch forward pass ran (cache or ONNX Runtime): measure on a sample instead
            _measure_similarity(f, net, s)
        else:
            f.measured = Probe(images=len(probed), unreadable=[], bn_kl=kl,
                               source_confidence=_source_confidence(net, f.features.features[None][0], f.spec))
    assert f.measured is not None
    f.measured.unreadable = f.unreadable
    weights = class_weights(f.counts) if resolve_balance(s.balance, f.counts) == "loss" else None
    with _timed(f, "candidates"):
        f.candidates = score_probes(f.features, weights, s.seed)


@torch.no_grad()
def _source_confidence(net: ZooModel, bottleneck: torch.Tensor, spec: BackboneSpec) -> float | None:
    """Mean top-1 probability of the source (ImageNet) classifier, which `net` still has."""
    if spec.notes:  # no pretrained source classifier
        return None
    device = next(net.parameters()).device
    return float(net.eval().forward_head(bottleneck.to(device)).softmax(1).max(1).values.mean())


def _prior(f: Findings, s: AdviseSettings) -> None:
    """The similarity score (pixel statistics on a class-balanced sample of the training images; separability
    by depth, reported beside it, from the evidence) and the quadrant rule's strategy."""
    assert f.measured is not None
    sample = stratified_subset([r.label for r in f.records], s.max_images, s.seed)
    with _timed(f, "pixels"):
        f.measured.textured_pixels = mean_textured_fraction([f.records[i].path for i in sample])
    last = f.spec.stages[-1]
    by_layer = {c.layer or last: c.accuracy for c in f.candidates if c.strategy in ("head", "svm")}
    f.measured.stage_accuracy = {st: by_layer[st] for st in f.spec.stages if st in by_layer}
    f.similarity, f.components = similarity_score(f.measured)
    similar = f.similarity >= SIMILARITY_THRESHOLD
    f.quadrant, f.prior = QUADRANTS[(f.size, "similar" if similar else "dissimilar")]


def _pilot_budget(f: Findings, s: AdviseSettings) -> tuple[float, str]:
    assert f.features is not None
    # What the evidence pass costs to compute, as timed when it ran or as its cache entries record: the same
    # budget on a first and a later `auto`, and a first run's one-off feature-graph export is not part of it.
    spent = f.features.compute_seconds
    if spent is None:  # entries cached before they recorded their cost: estimated at an assumed CPU rate
        spent = len(f.features.labels) * f.features.views / ASSUMED_FORWARD_RATE
    # What auto measured beside the feature pass, which the strategy it then runs does not (that strategy
    # also builds the model and scans the images).
    overhead = sum(f.seconds.get(k, 0.0) for k in ("similarity", "candidates", "pixels"))
    return pilot_budget(f.size, spent, s.budget_minutes, overhead)


def _run_pilots(f: Findings, s: AdviseSettings) -> None:
    """Fine-tuning pilots where they can change the decision, within the budget."""
    assert f.features is not None
    best = max(c.accuracy for c in f.candidates)
    budget, given = _pilot_budget(f, s)
    if f.size == "small" and best >= PILOT_BELOW:
        f.pilot_reason = f"none: the best frozen-feature candidate reached {100 * best:.1f}% (at least " \
                         f"{100 * PILOT_BELOW:.0f}%)"
        return
    if budget <= 0:
        f.pilot_reason = f"none: a budget of 0 ({given})"
        return
    f.budget_s = budget
    names = ["partial"] if f.size == "small" else ["partial", "full"]
    for name in names:
        # Each pilot at the size its strategy would train at (--image-size auto: smaller only for `full`).
        cfg, _ = choose_preprocess(f.spec.preprocess_config(), s.image_size, [min(r.stored) for r in f.records],
                                   get_strategy(name).every_layer_learns)
        setup = PilotSetup(f.model, f.spec, len(f.data.classes), cfg, s.seed, f.augment, s.batch_size, s.workers,
                           s.compute)
        if (pilot := run_pilot(name, at_size(f.records, cfg), budget / len(names), setup)) is not None:
            f.pilots.append(pilot)
    if not f.pilots:
        hint = "" if "pass --budget" in given else "; pass --budget to give pilots more"
        f.pilot_reason = (f"none: a budget of {budget:.0f} s ({given}) buys too few training images for a "
                          f"{' or '.join(names)} pilot{hint}")
        return
    f.pilot_reason = (f"{', '.join(names)} within a budget of {budget:.0f} s ({given}), on part of the training split"
                      + ("" if f.size == "small" else "; each trains on a subset for a few epochs, so the full run "
                         "should score above its pilot (an extrapolation, not a measurement)"))


def _decide(f: Findings) -> None:
    if f.size == "large":  # short pilots of partial and full decide between Q1 and Q2
        if f.pilots:
            f.pick, f.reason = choose(f.pilots, f.prior)
        else:
            named = [c for c in f.candidates if c.strategy == f.prior]
            f.pick = named[0] if named else Candidate(f.prior, None, 0.0, 0.0, 0.0, "the quadrant rule")
            f.reason = f"no pilot could run within the budget: the quadrant rule's {f.prior}"
        return
    f.pick, f.reason = choose(f.candidates, f.prior)
    for pilot in f.pilots:
        if pilot.accuracy - f.pick.accuracy > gap_margin(pilot, f.pick):
            f.reason = (f"the {pilot.strategy} pilot scored {100 * pilot.accuracy:.1f}% held out, above the best "
                        f"frozen-feature candidate ({100 * f.pick.accuracy:.1f}%)")
            f.pick = pilot


def advise(data_dir: Path | str | ImageFolderData, model: str = "efficientnet_lite0",
           settings: AdviseSettings | None = None, **overrides: Any) -> Advice:
    """Measure the dataset, score candidates on its training split, pick the best measured strategy."""
    tick = time.perf_counter()
    s = replace(settings or AdviseSettings(), **overrides)
    parse_image_size(s.image_size)  # a bad value fails before any image is read
    data = data_dir if isinstance(data_dir, ImageFolderData) else load_image_folder(
        data_dir, val_fraction=s.val_fraction, seed=s.seed, test_fraction=s.test_fraction)
    counts = list(data.class_counts("train").values())
    size = "small" if is_small(len(data.train), s.size_threshold) else "large"
    spec = get_spec(model)
    f = Findings(model, spec, data, counts, size, size == "small" if s.augment is None else s.augment,
                 spec.preprocess_config())
    net = create_model(model, num_classes=None, pretrained=True)  # with the source classifier, for its confidence
    net.to(s.compute.device)
    f.seconds["setup"] = time.perf_counter() - tick
    with heap_reuse(s.compute.device.type):  # CPU passes reuse freed tensors (zoo.cpu_memory)
        _score_cheap_candidates(f, net, s)
        _prior(f, s)
        _run_pilots(f, s)
        _decide(f)
    return build_advice(f, s, time.perf_counter() - tick)
