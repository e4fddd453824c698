"""`zoo finetune`'s options: what the user asked for, checked and resolved once.

FinetuneOptions holds the flags as given (None means "the default"). `resolve` checks them,
decides what happens to the run directory, and asks the advisor wherever the user left the choice
to it (`--strategy auto`, or `svm` without `--layer`). Every check a user can fail runs here,
before the run directory is touched; the Resolved result is what every later phase reads.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zoo.backbones import BackboneSpec, get_spec
from zoo.errors import UsageError
from zoo.hardware import CPU_FP32, Compute
from zoo.log import get_logger
from zoo.run_dir import CONFIG, METRICS, is_complete, read_json
from zoo.training import distributed
from zoo.training.balance import BALANCE_MODES
from zoo.training.image_size import parse_image_size
from zoo.training.strategies import Strategy, get_strategy
from zoo.training.tracking import check_log_mode

log = get_logger(__name__)


@dataclass(frozen=True)
class FinetuneOptions:
    """The flags of `zoo finetune` (and the keywords of `zoo.finetune`)."""

    data_dir: Path
    model: str = "efficientnet_lite0"
    strategy: str = "head"  # a registered strategy, or "auto"
    freeze_until: str | None = None  # partial: the last frozen stage (default: the backbone's choice)
    layer: str | None = None  # svm: the tapped stage (default: the advisor's most separable one)
    epochs: int | None = None  # default: the strategy's
    lr: float | None = None  # the new classifier's rate (default: the strategy's)
    backbone_lr: float | None = None  # trainable pretrained weights (default: lr / 10)
    batch_size: int = 32
    augment: bool | None = None  # default: on for small data (zoo.thresholds)
    views: int = 4  # views per training image in the feature cache: the inference view and 3 augmented ones
    balance: str = "auto"
    seed: int = 0
    out: Path | None = None  # default: runs/<data>-<model>-<strategy>
    resume: bool = False
    force: bool = False
    pretrained: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.0  # held out with the seed when the data has no test/ folder; only reports
    patience: int | None = None  # stop after this many epochs without a better val figure (None: run them all)
    log: str = "tensorboard"  # tensorboard, mlflow (and tensorboard) or none (zoo.training.tracking)
    cache: bool = True
    cache_dir: Path | None = None
    workers: int | None = None  # data-loading processes (default: default_workers())
    budget: float | None = None  # auto: minutes for fine-tuning pilots (default: the advisor's)
    max_latency_ms: float | None = None  # model "auto": the slowest acceptable ONNX Runtime latency, batch 1
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps (zoo.hardware)
    precision: str = "auto"  # auto, fp32, bf16 or fp16
    image_size: str = "auto"  # auto or pixels (zoo.training.image_size)
    warm_head: bool = False  # full, partial: fit the classifier on frozen features first (zoo.training.warm_head)

    @property
    def run_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        return Path("runs") / f"{Path(self.data_dir).resolve().name}-{self.model}-{self.strategy}"


@dataclass(frozen=True)
class Resolved:
    """The options with every choice made: the advisor's where asked, `out` and `workers` filled in."""

    options: FinetuneOptions
    strategy: Strategy
    spec: BackboneSpec
    state: str  # the run directory: "new", "replace", "resume" or "complete"
    requested_strategy: str  # what the user asked for ("auto" stays visible in config.json)
    advice: dict[str, Any] | None  # the advisor's report, when it was asked
    workers: int
    compute: Compute = CPU_FP32  # the device and precision everything runs on

    @property
    def out(self) -> Path:
        return self.options.run_dir


def default_workers() -> int:
    """Data-loading processes: none on small machines, where they would only compete with the model."""
    cpus = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: ranks share the CPUs
    return 0 if cpus <= 2 else min(8, cpus // 2)


def _check_stages(o: FinetuneOptions, strategy: Strategy, spec: BackboneSpec) -> None:
    if o.layer is not None:
        if not strategy.takes_layer:
            raise UsageError(f"--layer only applies to --strategy svm: drop it, or use svm instead of {strategy.name}.")
        if o.layer not in spec.stages:
            raise UsageError(f"{o.layer!r} is not a stage of {spec.name}: choose --layer from "
                             f"{', '.join(spec.stages)}.")
    if o.freeze_until is not None:
        if not strategy.takes_freeze_until:
            raise UsageError(f"--freeze-until only applies to --strategy partial: drop it, or use partial instead of "
                             f"{strategy.name}.")
        if o.freeze_until not in spec.stages:
            raise UsageError(f"{o.freeze_until!r} is not a stage of {spec.name}: choose --freeze-until from "
                             f"{', '.join(spec.stages)}.")


def check_options(o: FinetuneOptions, strategy: Strategy, spec: BackboneSpec) -> None:
    """Every mistake a flag can hold, as one sentence, before anything is read or written."""
    _check_stages(o, strategy, spec)
    if o.balance not in BALANCE_MODES:
        raise UsageError(f"Unknown balance mode {o.balance!r}: choose one of {', '.join(BALANCE_MODES)}.")
    for name, value in (("--epochs", o.epochs), ("--batch-size", o.batch_size), ("--views", o.views)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1: give a positive whole number.")
    for name, rate in (("--lr", o.lr), ("--backbone-lr", o.backbone_lr)):
        if rate is not None and not (math.isfinite(rate) and rate > 0):  # inf and nan train to nan
            raise UsageError(f"{name} must be a finite number greater than 0, not {rate}: give a learning rate such "
                             "as 0.001.")
    if not 0 < o.val_fraction < 1:
        raise UsageError("The validation fraction must be between 0 and 1: give e.g. 0.2.")
    if not 0 <= o.test_fraction < 1 - o.val_fraction:
        raise UsageError("--test-fraction must be at least 0 and leave images to train on: give e.g. 0.1.")
    if o.patience is not None and o.patience < 1:
        raise UsageError("--patience must be at least 1 epoch: give e.g. 3, or leave it out to run every epoch.")
    if o.budget is not None and o.budget < 0:
        raise UsageError("--budget must be 0 or more minutes: give e.g. 5, or 0 for no fine-tuning pilots.")
    parse_image_size(o.image_size)
    check_log_mode(o.log)
    if o.resume and o.force:
        raise UsageError("--resume and --force contradict each other: pass --resume to continue a run, "
                         "or --force to start it over.")


def run_dir_state(out: Path, resume: bool, force: bool) -> str:
    """'new', 'replace', 'resume' or 'complete'; refuses to touch a folder the user did not hand over."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not out.is_dir():
        raise UsageError(f"{out} is a file: give --out a folder name.")
    if not (resume or force):
        raise UsageError(f"{out} already exists: pass --resume to continue that run, --force to replace it, "
                         "or --out to choose another folder.")
    if not (out / CONFIG).is_file():  # --force replaces runs, never a folder of something else
        raise UsageError(f"{out} is not a run directory of `zoo finetune` (no {CONFIG}): choose another --out.")
    if force:
        return "replace"
    if is_complete(out) and (out / METRICS).is_file():  # the marker comes last; a run missing its metrics is redone
        return "complete"
    return "resume"


def _ask_advisor(o: FinetuneOptions, state: str, workers: int, pilots: bool, compute: Compute) -> dict[str, Any]:
    """The advice a run started with (when resuming), else a fresh one; rank 0 asks, every rank follows.

    The advisor extracts its evidence with this run's seed, split, views and cache, so the strategy
    it picks reads those features back instead of running the backbone again.
    """
    from zoo.advisor.recommend import AdviseSettings, advise

    advice = None
    if state == "resume":
        advice = distributed.from_main(lambda: read_json(o.run_dir / CONFIG).get("advice"))
    if advice is None:
        budget = o.budget if pilots else 0.0  # None: the advisor's default
        settings = AdviseSettings(seed=o.seed, val_fraction=o.val_fraction, test_fraction=o.test_fraction,
                                  augment=o.augment, views=o.views, budget_minutes=budget, cache_dir=o.cache_dir,
                                  use_cache=o.cache,
                                  batch_size=o.batch_size, workers=workers, balance=o.balance, compute=compute,
                                  image_size=o.image_size)
        advice = distributed.from_main(lambda: advise(o.data_dir, model=o.model, settings=settings).to_json())
    return advice


def _follow_advice(o: FinetuneOptions, strategy: Strategy | None, advice: dict[str, Any],
                   spec: BackboneSpec) -> tuple[FinetuneOptions, Strategy]:
    """`auto` takes the advisor's strategy and recipe; `svm` its layer. Flags the user gave still win."""
    if strategy is None:
        strategy = get_strategy(advice["strategy"])
        o = replace(o, strategy=strategy.name, freeze_until=o.freeze_until or advice["freeze_until"],
                    augment=advice["augment"] if o.augment is None else o.augment,
                    lr=o.lr or advice["lr_head"] or None,  # svm: 0, no rate
                    backbone_lr=o.backbone_lr or advice["lr_backbone"] or None)
        log.info(f"auto: the advisor chose {advice['quadrant']} -> {strategy.name}")
    layer = o.layer or (advice["layer"] if strategy.takes_layer else None)
    if strategy.takes_layer and layer is None:
        from zoo.advisor.similarity import best_earlier_layer

        layer = best_earlier_layer(advice["stage_accuracy"], list(spec.stages))
    return replace(o, layer=layer), strategy


def _choose_backbone(o: FinetuneOptions, workers: int, compute: Compute) -> tuple[FinetuneOptions, dict[str, Any]]:
    """`--model auto`: every backbone with weights here, ranked on this data; the best within the latency budget."""
    from zoo.advisor.backbones import available_backbones, pick_backbone, rank_backbones
    from zoo.advisor.recommend import AdviseSettings

    settings = AdviseSettings(seed=o.seed, val_fraction=o.val_fraction, test_fraction=o.test_fraction,
                              augment=o.augment, views=o.views, cache_dir=o.cache_dir, use_cache=o.cache,
                              batch_size=o.batch_size, workers=workers,
                              balance=o.balance, compute=compute)
    ranked = distributed.from_main(lambda: rank_backbones(o.data_dir, available_backbones(), settings))
    pick = pick_backbone(ranked, o.max_latency_ms)
    log.info(f"--model auto: {pick.model} (probe score {100 * pick.score:.1f}%, "
             f"{pick.latency_ms[1]:.1f} ms at batch 1)")
    return replace(o, model=pick.model), {"ranking": [b.to_json() for b in ranked], "pick": pick.model,
                                          "max_latency_ms": o.max_latency_ms}


def resolve(options: FinetuneOptions) -> Resolved:
    """Check the options, settle the run directory, and make the choices left to the advisor."""
    o = replace(options, data_dir=Path(options.data_dir), out=options.run_dir)
    compute = Compute.resolve(o.device, o.precision)  # a device this machine lacks: one sentence, nothing written
    backbones = None
    if o.model == "auto":
        o, backbones = _choose_backbone(o, default_workers() if o.workers is None else o.workers, compute)
    spec = get_spec(o.model)
    strategy = get_strategy(o.strategy) if o.strategy != "auto" else None
    if strategy is not None:
        check_options(o, strategy, spec)
    state = distributed.from_main(lambda: run_dir_state(o.run_dir, o.resume, o.force))  # rank 0 holds the run
    workers = default_workers() if o.workers is None else o.workers
    advice = None
    if state == "complete":  # nothing left to decide: the run says what it was
        strategy = strategy or get_strategy(distributed.from_main(lambda: read_json(o.run_dir / CONFIG))["strategy"])
    elif strategy is None or (strategy.takes_layer and o.layer is None):
        advice = _ask_advisor(o, state, workers, pilots=strategy is None, compute=compute)
        o, strategy = _follow_advice(o, strategy, advice, spec)
        check_options(o, strategy, spec)
    if backbones is not None:
        advice = {**(advice or {}), "backbones": backbones}
    return Resolved(o, strategy, spec, state, options.strategy, advice, workers, compute)
