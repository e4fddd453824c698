"""Short fine-tuning pilots for `auto`: a strategy trained on part of the training split, scored on the rest.

A pilot tells whether training the backbone beats the cheap linear candidates on this data. It fits a
hard time budget: the number of images it trains on is sized from a training step timed on this machine
before it starts, and the epoch loop stops at a deadline whatever happened. Only training images are used
(an inner split, stratified, seeded); the validation split is never read.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from torch import nn

from zoo.advisor.evidence import Candidate
from zoo.backbones import BackboneSpec, create_model
from zoo.hardware import CPU_FP32, Compute
from zoo.log import get_logger
from zoo.preprocess import PreprocessConfig
from zoo.training.augment import item_seed
from zoo.training.batchnorm import recalibrate
from zoo.training.datasets import ImageRecord, ImageViews, epoch_order, loader, shape_batches
from zoo.training.loop import predict_images, train_images_epoch
from zoo.training.strategies import BACKBONE_LR_FACTOR, Plan, apply_freeze, get_strategy, param_groups, train_mode

log = get_logger(__name__)
PILOT_EPOCHS = 3  # enough for the pretrained layers to move; the cosine schedule spans these
HELD_OUT = 0.2  # share of each class's training images the pilot is scored on
TRAIN_COST = 3.0  # a training step costs about three forward passes (forward, backward, update)
PROBE_IMAGES = 8  # images in the timed training step that sizes a pilot
CALIBRATION = 128  # images the trainable BatchNorm statistics are recomputed on before scoring
DEFAULT_BUDGET_MINUTES = 5.0  # for pilots on large data, when --budget is not given
# On small data the default budget is what keeps auto within SMALL_PILOT_SHARE more than the cheap
# strategy it would otherwise run, whose cost is about the evidence pass (one pass of the backbone over
# the same views): that share of the pass, less what auto has already spent beside it (similarity,
# cross-validation). A pilot with five minutes cost 1.6x on the emoji set and lost there, and one with
# half the pass and nothing subtracted 1.52x (benchmarks/strategies.py). --budget gives pilots more.
SMALL_PILOT_SHARE = 0.5
# Forward images/s assumed for evidence read from cache entries that do not record what their pass cost
# (written before entries did; lite0 on a small CPU): what the small-data budget is then a share of
# (recommend.py). Pilots time their own training step.
ASSUMED_FORWARD_RATE = 30.0


def pilot_budget(size: str, evidence_seconds: float, budget_minutes: float | None,
                 overhead_seconds: float = 0.0) -> tuple[float, str]:
    """Seconds for pilots, and where the figure comes from. overhead_seconds: what auto spent beside the
    evidence pass so far, which the small-data default leaves out of the pilots' share."""
    if budget_minutes is not None:
        return 60.0 * budget_minutes, "--budget"
    if size == "large":
        return 60.0 * DEFAULT_BUDGET_MINUTES, "the default for large data"
    share = SMALL_PILOT_SHARE * evidence_seconds - overhead_seconds
    return max(0.0, min(60.0 * DEFAULT_BUDGET_MINUTES, share)), (
        f"the default on small data: {100 * SMALL_PILOT_SHARE:.0f}% of what the evidence pass costs "
        f"({evidence_seconds:.0f} s), less the {overhead_seconds:.0f} s auto spent beside it, so that auto stays "
        f"within {1 + SMALL_PILOT_SHARE:g}x of the cheap strategy; pass --budget to give pilots more")


@dataclass(frozen=True)
class PilotSetup:
    model: str
    spec: BackboneSpec
    classes: int
    preprocess: PreprocessConfig
    seed: int
    augment: bool
    batch_size: int
    workers: int
    compute: Compute = CPU_FP32  # the run's device and precision


def inner_split(records: list[ImageRecord], seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(pilot train, pilot held-out): HELD_OUT of every class held out, at least one image each."""
    rng = random.Random(item_seed(seed, "pilot-split"))
    train, held = [], []
    for label in sorted({r.label for r in records}):
        mine = [r for r in records if r.label == label]
        rng.shuffle(mine)
        n = max(1, round(len(mine) * HELD_OUT)) if len(mine) > 1 else 0
        held += mine[:n]
        train += mine[n:]
    return train, held


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer reads what the step took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_per_training_image(plan: Plan, train: list[ImageRecord], setup: PilotSetup) -> float:
    """What one training image costs here: PROBE_IMAGES images decoded, forward and backward, timed on the
    second of two steps (the first sets up kernels and memory); gradients are dropped, no weight moves.

    Measured, not derived from the evidence pass. That pass ran ONNX Runtime on other views, and the first
    time a backbone is used its time includes exporting the feature graph: sized from it, a first `auto` on
    large data skipped its pilots (20 texture crops, size threshold 5, a 12 s budget, a fresh cache: no pilot
    before, both in 9.6 s now). Nor does it tell partial from full, whose backward pass runs through every
    layer (1,000 digits, a 1-minute budget: 258 training images for each before; 292 and 208 now). With
    cached features it assumed a rate: emoji's partial pilot trained on 34 images in 5.5 s of a 19 s budget
    and scored 23.7%; timed, it trains on 219 in 20.9 s of 18 s and scores 53.8%.
    """
    seeds = [item_seed(setup.seed, "pilot-probe", i) for i in range(PROBE_IMAGES)] if setup.augment else None
    views = ImageViews(train[:PROBE_IMAGES], setup.preprocess, seeds)
    batch = shape_batches(range(len(views)), views.shapes(), PROBE_IMAGES)[0]
    train_mode(plan)
    seconds = 0.0
    # The random state is put back afterwards (dropout draws from it), and recalibrate() resets the BatchNorm
    # statistics these steps move: a pilot trains and scores as it would without the timing.
    cuda = [setup.compute.device] if setup.compute.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), setup.compute.training_pass(plan.model):
        for _ in range(2):
            tick = time.perf_counter()
            x, y = next(iter(loader(views, [batch], 0)))
            with setup.compute.autocast():
                loss = nn.functional.cross_entropy(plan.model(setup.compute.batch(x)), y.to(setup.compute.device))
            loss.backward()
            _synchronize(setup.compute.device)
            seconds = time.perf_counter() - tick
    plan.model.zero_grad(set_to_none=True)
    return seconds / len(batch)


def _affordable(train: list[ImageRecord], held: int, seconds_left: float, per_image_s: float,
                seed: int) -> tuple[list[ImageRecord], float]:
    """As many training images as PILOT_EPOCHS epochs can see in seconds_left after scoring, and the
    seconds scoring will take (a forward pass costs about 1/TRAIN_COST of a training step)."""
    scoring_s = (held + min(CALIBRATION, len(train))) * per_image_s / TRAIN_COST
    n = int((seconds_left - scoring_s) / (per_image_s * PILOT_EPOCHS))
    if n >= len(train):
        return train, scoring_s
    rng = random.Random(item_seed(seed, "pilot-subset"))
    return sorted(rng.sample(train, max(0, n)), key=lambda r: str(r.path)), scoring_s


def run_pilot(strategy_name: str, records: list[ImageRecord], budget_s: float, setup: PilotSetup) -> Candidate | None:
    """Train `strategy_name` on the inner split within budget_s; None when the budget cannot buy one epoch."""
    tick = time.perf_counter()
    deadline = time.monotonic() + budget_s
    train, held = inner_split(records, setup.seed)
    if len(train) < 2 * setup.classes or not held:
        log.info(f"pilot {strategy_name}: too few training images to split; skipped")
        return None
    strategy = get_strategy(strategy_name)
    torch.manual_seed(setup.seed)
    plan = strategy.plan(create_model(setup.model, num_classes=setup.classes, pretrained=True), setup.spec, None)
    apply_freeze(plan)
    setup.compute.prepare(plan.model)
    per_image_s = seconds_per_training_image(plan, train, setup)
    train, scoring_s = _affordable(train, len(held), deadline - time.monotonic(), per_image_s, setup.seed)
    if len(train) < 2 * setup.classes:
        log.info(f"pilot {strategy_name}: a budget of {budget_s:.0f} s buys too few images "
                 f"({per_image_s:.2f} s per training image); skipped")
        return None
    scaler = setup.compute.grad_scaler()
    optimizer = torch.optim.AdamW(param_groups(plan.model, strategy.default_lr,
                                               strategy.default_lr * BACKBONE_LR_FACTOR), weight_decay=1e-4)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    labels = [r.label for r in train]
    epochs = 0
    for epoch in range(PILOT_EPOCHS):
        if time.monotonic() > deadline - scoring_s:
            break
        generator = torch.Generator().manual_seed(item_seed(setup.seed, "pilot", epoch))
        seeds = [item_seed(setup.seed, "pilot-view", epoch, i) for i in range(len(train))] if setup.augment else None
        views = ImageViews(train, setup.preprocess, seeds)
        order = epoch_order(labels, generator, balanced_sampling=False)
        batches = shape_batches(order, views.shapes(), setup.batch_size, generator)
        train_images_epoch(plan, views, batches, optimizer, nn.CrossEntropyLoss(), base_lrs, epoch, PILOT_EPOCHS,
                           setup.workers, deadline=deadline - scoring_s, compute=setup.compute, scaler=scaler)
        epochs += 1
    recalibrate(plan, ImageViews(train[:CALIBRATION], setup.preprocess), setup.batch_size, setup.workers)
    logits = predict_images(plan.model, ImageViews(held, setup.preprocess), setup.batch_size, setup.workers,
                            f"pilot {strategy_name}: scoring", setup.compute)
    accuracy = float((logits.argmax(1) == torch.tensor([r.label for r in held])).float().mean())
    return Candidate(strategy_name, None, accuracy, math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / len(held)),
                     time.perf_counter() - tick,
                     f"pilot: {epochs} epoch(s) on {len(train)} training images, scored on {len(held)} held-out "
                     f"training images")
