"""The fit phase of `zoo finetune`: optimizer, resume, the epochs (or svm's single fit), checkpoints.

Read top to bottom: `fit` prepares what every epoch reads (cached features or image views, the
BatchNorm calibration images), builds the optimizer, resumes from the last checkpoint if there is
one, then runs `train_one_epoch` until the recipe's epochs are done. Each epoch ends with an atomic
checkpoint, so an interruption leaves a run that `--resume` continues to the same result.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.atomic import atomic_write_json
from zoo.errors import WorkFailed, ZooError
from zoo.log import get_logger
from zoo.run_dir import CONFIG
from zoo.training import distributed
from zoo.training.augment import item_seed
from zoo.training.batchnorm import calibration_records, recalibrate
from zoo.training.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from zoo.training.datasets import ImageViews, KeptViews, epoch_order, shape_batches
from zoo.training.feature_cache import bottleneck_views, tensors_fingerprint
from zoo.training.loop import predict_features, predict_images, train_features_epoch, train_images_epoch
from zoo.training.metrics import classification_report
from zoo.training.options import Resolved
from zoo.training.recipe import WEIGHT_DECAY, Recipe, TrainingData
from zoo.training.report import write_history
from zoo.training.selection import BestEpoch, should_stop
from zoo.training.strategies import Plan, frozen_state, param_groups, trainable_state
from zoo.training.tracking import Tracker
from zoo.training.warm_head import warm_start

log = get_logger(__name__)


@dataclass
class EpochInputs:
    """What every epoch reads; fixed for the whole run."""

    train_y: torch.Tensor
    val_y: torch.Tensor
    train_features: list[torch.Tensor] | None  # one [N, D] tensor per cached view (feature strategies)
    val_features: torch.Tensor | None
    val_views: ImageViews
    calibration_views: ImageViews  # the images trainable BatchNorm statistics are recomputed on


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    val_logits: torch.Tensor  # of the best epoch, whose weights the model holds
    cache_report: dict[str, Any] | None
    best_epoch: int = 1
    stopped_early: bool = False
    test_logits: torch.Tensor | None = None  # the held-out test split, scored once with the best weights


def epoch_inputs(run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe) -> tuple[EpochInputs, dict | None]:
    """The inputs, and the feature cache's report (None when the backbone runs in every epoch)."""
    o = run.options
    train_feats = val_feats = cache_report = None
    if recipe.on_features:
        train_feats, val_feats, cache_report = bottleneck_views(
            plan, o.model, data.train, data.val, data.preprocess, views=recipe.augment_views, seed=o.seed,
            cache_dir=o.cache_dir if o.cache else None, use_cache=o.cache, batch_size=o.batch_size,
            workers=run.workers)
    calibration = calibration_records(data.train, item_seed(o.seed, "batchnorm"))
    seeds = [item_seed(o.seed, "batchnorm", i) for i in range(len(calibration))] if recipe.augment else None
    inputs = EpochInputs(torch.tensor([r.label for r in data.train]), torch.tensor([r.label for r in data.val]),
                         train_feats, val_feats, ImageViews(data.val, data.preprocess),
                         KeptViews(calibration, data.preprocess, seeds))
    return inputs, cache_report


def resume_point(run: Resolved, plan: Plan, optimizer: torch.optim.Optimizer,
                 frozen_fp: str) -> tuple[int, list[dict], BestEpoch]:
    """(epochs already done, their history, the best so far): from the checkpoint when resuming, else none."""

    def read() -> dict | None:  # rank 0 reads it, every rank resumes from it
        checkpoint = load_checkpoint(run.out) if run.state == "resume" else None
        if checkpoint is not None:
            if checkpoint["frozen_fingerprint"] != frozen_fp:
                raise ZooError(f"The pretrained weights of {run.options.model} changed since {run.out} was started: "
                               "pass --force to start over.")
            if set(checkpoint["model"]) != set(trainable_state(plan)):
                raise ZooError(f"{run.out / CHECKPOINT} does not match this model: pass --force to start over.")
        return checkpoint

    checkpoint = distributed.from_main(read)
    if checkpoint is None:
        if run.state == "resume":
            log.warning(f"{run.out} holds no checkpoint (it stopped before its first epoch ended): "
                        "starting from epoch 1")
        return 0, [], BestEpoch()
    plan.model.load_state_dict(checkpoint["model"], strict=False)
    optimizer.load_state_dict(checkpoint["optimizer"])
    log.info(f"resuming after epoch {checkpoint['epoch']}")
    return checkpoint["epoch"], checkpoint["history"], BestEpoch.from_checkpoint(checkpoint)


def fit_linear_classifier(run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe, inputs: EpochInputs,
                          config: dict) -> tuple[list[dict], torch.Tensor]:
    """svm: one scikit-learn fit with cross-validated C replaces the epochs; recorded in config.json."""
    from zoo.training.linear_probe import fit_linear_probe

    assert inputs.train_features is not None and inputs.val_features is not None
    tick = time.time()
    probe = fit_linear_probe(inputs.train_features, inputs.train_y, recipe.class_weights, run.options.seed,
                             chosen=_advised_c(run, plan))
    probe.fold_into(plan.model.classifier)
    val_logits = predict_features(plan.model, inputs.val_features)
    report = classification_report(val_logits, inputs.val_y, data.classes)
    train_logits = predict_features(plan.model, inputs.train_features[0])
    history = [{"epoch": 1, "train_loss": float(nn.functional.cross_entropy(train_logits, inputs.train_y)),
                "train_accuracy": probe.train_accuracy, "val_loss": report["loss"],
                "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"], "lr": 0.0,
                "backbone_lr": 0.0, "seconds": time.time() - tick}]
    config["svm"] = {"C": probe.c, "cv_accuracy": probe.cv_accuracy, "layer": plan.layer,
                     "features": int(inputs.train_features[0].shape[1])}
    if distributed.world().is_main:
        atomic_write_json(run.out / CONFIG, config)
    log.info(f"svm on {plan.layer}: C={probe.c:g} (cross-validated), train acc {probe.train_accuracy:.3f}, "
             f"val acc {report['accuracy']:.3f}")
    return history, val_logits


def _advised_c(run: Resolved, plan: Plan) -> tuple[float, dict[float, float]] | None:
    """auto picked svm on this layer: the advisor already cross-validated C on these very features."""
    pick = (run.advice or {}).get("evidence", {}).get("pick", {})
    if pick.get("strategy") != "svm" or pick.get("layer") != plan.layer or pick.get("c") is None:
        return None
    return float(pick["c"]), {float(c): a for c, a in (pick.get("cv_accuracy") or {}).items()}


@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # the cosine schedule scales these
    loss_fn: nn.Module
    parallel: distributed.DataParallel | None  # DDP when several processes train on images
    scaler: torch.amp.GradScaler  # fp16 loss scaling (disabled otherwise)


def train_one_epoch(epoch: int, run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe,
                    inputs: EpochInputs, opt: Optimisation) -> tuple[dict[str, Any], torch.Tensor]:
    """One epoch and its validation: (the history row, the val logits)."""
    o, tick = run.options, time.time()
    # Data order, augmentation and dropout depend only on (seed, epoch): a resumed run repeats them.
    torch.manual_seed(item_seed(o.seed, "dropout", epoch))
    generator = torch.Generator().manual_seed(item_seed(o.seed, "order", epoch))
    order = epoch_order(inputs.train_y.tolist(), generator, balanced_sampling=recipe.balance == "sampler")
    if inputs.train_features is not None and inputs.val_features is not None:
        features = inputs.train_features[epoch % len(inputs.train_features)]  # cycle through the cached views
        batches = shape_batches(order, None, o.batch_size)
        train_loss, train_acc = train_features_epoch(plan, features, inputs.train_y, batches, opt.optimizer,
                                                     opt.loss_fn, opt.base_lrs, epoch, recipe.epochs)
        val_logits = predict_features(plan.model, inputs.val_features)
    else:
        seeds = [item_seed(o.seed, "train", epoch, i) for i in range(len(data.train))] if recipe.augment else None
        views = ImageViews(data.train, data.preprocess, seeds)
        batches = shape_batches(order, views.shapes(), o.batch_size, generator)
        train_loss, train_acc = train_images_epoch(plan, views, batches, opt.optimizer, opt.loss_fn, opt.base_lrs,
                                                   epoch, recipe.epochs, run.workers, opt.parallel,
                                                   compute=run.compute, scaler=opt.scaler)
        if recalibrate(plan, inputs.calibration_views, o.batch_size, run.workers) and opt.parallel is not None:
            opt.parallel.sync_buffers()  # the ranks computed the same statistics; rank 0's make it exact
        val_logits = predict_images(plan.model, inputs.val_views, o.batch_size, run.workers, "validating",
                                    run.compute)
    check_finite(plan, epoch, recipe, train_loss, val_logits)  # before the metrics, which refuse nan
    report = classification_report(val_logits, inputs.val_y, data.classes)
    groups = opt.optimizer.param_groups
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": report["loss"],
           "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"], "lr": groups[0]["lr"],
           "backbone_lr": groups[-1]["lr"] if len(opt.base_lrs) > 1 else 0.0, "seconds": time.time() - tick}
    log.info(f"epoch {epoch + 1}/{recipe.epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
             f"val loss {report['loss']:.4f} acc {report['accuracy']:.3f} macro-F1 {report['macro_f1']:.3f} | "
             f"{row['seconds']:.1f} s")
    return row, val_logits


def diverged(epoch: int, recipe: Recipe, what: str) -> WorkFailed:
    return WorkFailed(f"Training diverged in epoch {epoch + 1} ({what}) with a learning rate of {recipe.lr:g}; nothing "
                      "was saved from this epoch: lower --lr (and --backbone-lr) and run again with --force.")


def check_finite(plan: Plan, epoch: int, recipe: Recipe, train_loss: float, val_logits: torch.Tensor) -> None:
    """Before this epoch's metrics and checkpoint, so the last good one stays: nan or inf never reaches a run
    directory."""
    if not math.isfinite(train_loss):
        raise diverged(epoch, recipe, f"train loss {train_loss:.4g}")
    if not bool(torch.isfinite(val_logits).all()):
        raise diverged(epoch, recipe, "the val logits became inf or nan")
    if not all(bool(torch.isfinite(p).all()) for p in plan.model.parameters() if p.requires_grad):
        raise diverged(epoch, recipe, "weights became inf or nan")


def run_epochs(start: int, run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe, inputs: EpochInputs,
               opt: Optimisation, history: list[dict[str, Any]], best: BestEpoch, frozen_fp: str,
               tracker: Tracker | None) -> bool:
    """Train from epoch `start` on, checkpointing each; True when --patience stopped the run early."""
    patience = run.options.patience
    for epoch in range(start, recipe.epochs):
        if should_stop(history, patience):
            log.info(f"early stop after epoch {len(history)}: val accuracy has not improved for {patience} epochs")
            return True
        try:
            row, val_logits = train_one_epoch(epoch, run, data, plan, recipe, inputs, opt)
        except RuntimeError as e:  # AdamW's step overflows float32 before the loss can show it
            if "overflow" not in str(e):
                raise
            raise diverged(epoch, recipe, "an optimizer step overflowed") from None
        history.append(row)
        best.update(history, trainable_state(plan), val_logits)
        if tracker is not None:
            tracker.epoch(row)
        if distributed.world().is_main:
            save_checkpoint(run.out, {"epoch": epoch + 1, "model": trainable_state(plan),
                                      "optimizer": opt.optimizer.state_dict(), "history": history,
                                      "frozen_fingerprint": frozen_fp, "best": best.to_checkpoint()})
            write_history(run.out / "history.csv", history)
    return False


def keep_best(run: Resolved, plan: Plan, inputs: EpochInputs, best: BestEpoch, epochs_run: int) -> torch.Tensor:
    """Put the best epoch's weights back into the model; its val logits (recomputed when not in memory)."""
    if best.epoch != epochs_run:
        plan.model.load_state_dict(best.state, strict=False)
        log.info(f"keeping epoch {best.epoch} of {epochs_run}: the best val accuracy")
    if best.val_logits is not None:
        return best.val_logits
    # resumed after the best epoch, or interrupted after the last checkpoint but before the run's files
    if inputs.val_features is not None:
        return predict_features(plan.model, inputs.val_features)
    return predict_images(plan.model, inputs.val_views, run.options.batch_size, run.workers, "validating",
                          run.compute)


def predict_test(run: Resolved, data: TrainingData, plan: Plan) -> torch.Tensor | None:
    """The test split's logits: the backbone runs on its images (they are never cached or trained on)."""
    if not data.test:
        return None
    return predict_images(plan.model, ImageViews(data.test, data.preprocess), run.options.batch_size, run.workers,
                          "testing", run.compute)


def fit(run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe, config: dict,
        tracker: Tracker | None = None) -> FitResult:
    inputs, cache_report = epoch_inputs(run, data, plan, recipe)
    optimizer = torch.optim.AdamW(param_groups(plan.model, recipe.lr, recipe.backbone_lr), weight_decay=WEIGHT_DECAY)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a checkpoint restores decayed rates
    weights = torch.tensor(recipe.class_weights) if recipe.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weights).to(run.compute.device)
    frozen_fp = tensors_fingerprint(frozen_state(plan))  # proves on resume that the frozen part is unchanged
    start, history, best = resume_point(run, plan, optimizer, frozen_fp)
    if recipe.warm_head and start == 0:  # a resumed run's checkpoint already holds its classifier
        config["warm_head_probe"] = warm_start(run, data, plan, recipe)
        if distributed.world().is_main:
            atomic_write_json(run.out / CONFIG, config)
    if run.strategy.takes_layer:
        history, val_logits = fit_linear_classifier(run, data, plan, recipe, inputs, config)
        best.update(history, trainable_state(plan), val_logits)
        if tracker is not None:
            tracker.epoch(history[0])
        start = recipe.epochs
    # Several processes training on images: DDP. On cached features every rank trains the same small
    # classifier on all of them (no communication; milliseconds per epoch).
    parallel = distributed.DataParallel(plan.model) if distributed.world().distributed and not recipe.on_features \
        else None
    opt = Optimisation(optimizer, base_lrs, loss_fn, parallel, run.compute.grad_scaler())
    stopped = run_epochs(start, run, data, plan, recipe, inputs, opt, history, best, frozen_fp, tracker)
    val_logits = keep_best(run, plan, inputs, best, len(history))
    return FitResult(history, val_logits, cache_report, best.epoch, stopped, predict_test(run, data, plan))
