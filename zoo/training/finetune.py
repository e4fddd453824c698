"""`zoo finetune`: an image folder in, a trained classifier and its run directory out.

The order matters for the user's files: every check a user can fail (data, model, strategy,
freeze point, run directory) runs before RUN_DIR is touched; then each epoch ends with an atomic
checkpoint, so an interruption leaves a run that `--resume` continues to the same result.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from zoo.backbones import get_spec
from zoo.backbones.registry import create_model
from zoo.data.folder import load_image_folder
from zoo.errors import ZooError
from zoo.run_dir import CONFIG, LABELS, WEIGHTS, atomic_write_bytes, atomic_write_json, read_json, save_weights
from zoo.training.augment import item_seed
from zoo.training.batchnorm import CALIBRATION_IMAGES, calibration_records, recalibrate, trainable_batchnorms
from zoo.training import distributed
from zoo.training.checkpoint import CHECKPOINT, load_checkpoint, remove_checkpoint, save_checkpoint
from zoo.training.datasets import ImageRecord, ImageViews, epoch_order, scan_images, shape_batches
from zoo.training.feature_cache import (FeatureCache, cached_features, dataset_fingerprint, default_cache_dir,
                                        tensors_fingerprint, weights_fingerprint)
from zoo.training.loop import predict_features, predict_images, train_features_epoch, train_images_epoch
from zoo.training.metrics import classification_report
from zoo.training.plots import plot_confusion, plot_curves
from zoo.training.report import model_card, write_history
from zoo.training.strategies import (BACKBONE_LR_FACTOR, Plan, apply_freeze, frozen_state, get_strategy, param_groups,
                                     trainable_names, trainable_state)

METRICS = "metrics.json"
SMALL_DATA = 1000  # fewer training images than this is "small" (design §3): augmentation is on by default
SKEW = 2.0  # largest / smallest class from which --balance auto weights the loss
WEIGHT_DECAY = 1e-4
BALANCE_MODES = ("auto", "none", "sampler", "loss")
# Options that change the result: a resumed run must use the values it was started with.
RESUME_KEYS = ("model", "strategy", "pretrained", "freeze_until", "layer", "epochs", "lr", "backbone_lr", "batch_size",
               "augment", "augment_views", "balance", "seed", "val_fraction", "feature_cache", "num_classes")


def default_workers() -> int:
    """Data-loading processes: none on small machines, where they would only compete with the model."""
    cpus = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: ranks share the CPUs
    return 0 if cpus <= 2 else min(8, cpus // 2)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)


def _check_options(strategy, spec, freeze_until, layer, epochs, lr, backbone_lr, batch_size, views, balance,
                   val_fraction, resume, force) -> None:
    if layer is not None:
        if not strategy.takes_layer:
            raise ZooError(f"--layer only applies to --strategy svm: drop it, or use svm instead of {strategy.name}.")
        if layer not in spec.stages:
            raise ZooError(f"{layer!r} is not a stage of {spec.name}: choose --layer from {', '.join(spec.stages)}.")
    if freeze_until is not None:
        if not strategy.takes_freeze_until:
            raise ZooError(f"--freeze-until only applies to --strategy partial: drop it, or use partial instead of "
                           f"{strategy.name}.")
        if freeze_until not in spec.stages:
            raise ZooError(f"{freeze_until!r} is not a stage of {spec.name}: choose --freeze-until from "
                           f"{', '.join(spec.stages)}.")
    if balance not in BALANCE_MODES:
        raise ZooError(f"Unknown balance mode {balance!r}: choose one of {', '.join(BALANCE_MODES)}.")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--views", views)):
        if value is not None and value < 1:
            raise ZooError(f"{name} must be at least 1: give a positive whole number.")
    for name, value in (("--lr", lr), ("--backbone-lr", backbone_lr)):
        if value is not None and not value > 0:
            raise ZooError(f"{name} must be greater than 0: give a learning rate such as 0.001.")
    if not 0 < val_fraction < 1:
        raise ZooError("The validation fraction must be between 0 and 1: give e.g. 0.2.")
    if resume and force:
        raise ZooError("--resume and --force contradict each other: pass --resume to continue a run, "
                       "or --force to start it over.")


def _run_dir_state(out: Path, resume: bool, force: bool) -> str:
    """'new', 'replace', 'resume' or 'complete'; refuses to touch a folder the user did not hand over."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not out.is_dir():
        raise ZooError(f"{out} is a file: give --out a folder name.")
    if not (resume or force):
        raise ZooError(f"{out} already exists: pass --resume to continue that run, --force to replace it, "
                       "or --out to choose another folder.")
    if not (out / CONFIG).is_file():  # --force replaces runs, never a folder of something else
        raise ZooError(f"{out} is not a run directory of `zoo finetune` (no {CONFIG}): choose another --out.")
    if force:
        return "replace"
    if (out / METRICS).is_file() and (out / WEIGHTS).is_file() and not (out / CHECKPOINT).is_file():
        return "complete"
    return "resume"


def _resolve_balance(balance: str, counts: list[int]) -> str:
    if balance != "auto":
        return balance
    return "loss" if max(counts) >= SKEW * max(min(counts), 1) else "none"


def _check_records(train: list[ImageRecord], val: list[ImageRecord], classes: list[str], root: Path) -> None:
    counts = [0] * len(classes)
    for r in train:
        counts[r.label] += 1
    if 0 in counts:
        raise ZooError(f"Class {classes[counts.index(0)]!r} has no readable training image: add images to its folder "
                       f"in {root} or remove the folder.")
    if not val:
        raise ZooError(f"{root} leaves no readable validation image: add a val/ folder or more images per class.")


def _compare_with_saved(saved: dict, config: dict, out: Path) -> None:
    for key in RESUME_KEYS:
        if saved.get(key) != config.get(key):
            raise ZooError(f"{out} was started with {key}={saved.get(key)!r}, not {config.get(key)!r}: resume with the "
                           "options it was started with, or pass --force to start over.")
    if saved["data"]["fingerprint"] != config["data"]["fingerprint"]:
        raise ZooError(f"The images in {config['data']['dir']} changed since {out} was started: pass --force to start over.")


@distributed.in_process_group
def finetune(
    data_dir: Path | str,
    *,
    model: str = "efficientnet_lite0",
    strategy: str = "head",
    freeze_until: str | None = None,
    layer: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    backbone_lr: float | None = None,
    batch_size: int = 32,
    augment: bool | None = None,
    views: int = 4,
    balance: str = "auto",
    seed: int = 0,
    out: Path | str | None = None,
    resume: bool = False,
    force: bool = False,
    pretrained: bool = True,
    val_fraction: float = 0.2,
    cache: bool = True,
    cache_dir: Path | str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Fine-tune `model` on the ImageFolder `data_dir`; write the run directory `out`; return its metrics.

    augment=None turns augmentation on for small data (fewer than 1,000 training images); `views`
    is how many augmented views per image the `head` strategy caches. balance="auto" weights the
    loss when the largest class is at least twice the smallest.

    Under torchrun (WORLD_SIZE > 1) every process calls this; they train one model together with
    DDP (see zoo.training.distributed), rank 0 alone writes `out`, and each returns the metrics.
    """
    started = time.time()
    world = distributed.world()
    show_progress = show_progress and world.is_main
    requested = strategy
    spec = get_spec(model)
    data_dir = Path(data_dir)
    out = Path(out) if out is not None else Path("runs") / f"{data_dir.resolve().name}-{model}-{strategy}"
    strat = get_strategy(strategy) if strategy != "auto" else None
    if strat is not None:
        _check_options(strat, spec, freeze_until, layer, epochs, lr, backbone_lr, batch_size, views, balance,
                       val_fraction, resume, force)
    state = distributed.from_main(lambda: _run_dir_state(out, resume, force))  # rank 0 holds the run directory
    if state == "complete":
        _say(show_progress, f"{out} is already complete; its metrics are in {out / METRICS}.")
        return distributed.from_main(lambda: read_json(out / METRICS))
    workers = default_workers() if workers is None else workers
    advice = None
    if strat is None or (strat.takes_layer and layer is None):
        # `auto` follows the advisor; `svm` without --layer taps the stage the advisor measures as best.
        from zoo.advisor import advise

        if state == "resume":  # the advice a run started with is the advice it finishes with
            advice = distributed.from_main(lambda: read_json(out / CONFIG).get("advice"))
        if advice is None:
            advice = distributed.from_main(lambda: advise(data_dir, model=model, seed=seed,
                                                          show_progress=show_progress).to_json())
        if strat is None:
            strategy, strat = advice["strategy"], get_strategy(advice["strategy"])
            freeze_until = freeze_until or advice["freeze_until"]
            augment = advice["augment"] if augment is None else augment
            lr = lr or advice["lr_head"] or None  # svm: 0, no rate
            backbone_lr = backbone_lr or advice["lr_backbone"] or None
            _say(show_progress, f"auto: the advisor chose {advice['quadrant']} -> {strategy}")
        layer = layer or (advice["layer"] if strat.takes_layer else None)
        if strat.takes_layer and layer is None:
            from zoo.advisor.recommend import best_earlier_layer

            layer = best_earlier_layer(advice["stage_accuracy"], list(spec.stages))
        _check_options(strat, spec, freeze_until, layer, epochs, lr, backbone_lr, batch_size, views, balance,
                       val_fraction, resume, force)

    # The data: every image decoded once; unreadable ones are skipped, reported and counted.
    data = load_image_folder(data_dir, val_fraction=val_fraction, seed=seed)
    pre = spec.preprocess_config()
    train_records, skipped = scan_images(data.train, pre, "checking train images", show_progress)
    val_records, skipped_val = scan_images(data.val, pre, "checking val images", show_progress)
    skipped += skipped_val
    for bad in skipped if world.is_main else []:
        print(f"warning: skipping {bad['path']}: {bad['reason']}", file=sys.stderr, flush=True)
    _check_records(train_records, val_records, data.classes, data_dir)
    train_counts = [sum(r.label == i for r in train_records) for i in range(len(data.classes))]
    balance = _resolve_balance(balance, train_counts)
    augment = len(train_records) < SMALL_DATA if augment is None else augment

    # The model: seeded, so a resumed run rebuilds exactly the same random parts.
    torch.manual_seed(seed)
    net = create_model(model, num_classes=len(data.classes), pretrained=pretrained)
    plan = strat.plan(net, spec, layer if strat.takes_layer else freeze_until)
    apply_freeze(plan)
    plan.model.to(world.device)  # one GPU per process under torchrun with nccl; the CPU otherwise
    # svm always fits on extracted features (cached on disk unless --no-cache).
    on_features = plan.on_cached_features and (cache or strat.takes_layer)
    lr = lr or strat.default_lr
    backbone_lr = backbone_lr or (lr * BACKBONE_LR_FACTOR if pretrained else lr)
    if not any(p.requires_grad for p in plan.model.backbone_parameters()):
        backbone_lr = 0.0  # nothing pretrained trains (head): say so rather than record an unused rate
    class_weights = [sum(train_counts) / (len(train_counts) * n) for n in train_counts] if balance == "loss" else None
    config = _config(model, spec, plan, strategy, pretrained, lr, backbone_lr, epochs or strat.default_epochs,
                     batch_size, augment, views if (augment and on_features) else None, balance, class_weights, seed,
                     val_fraction, on_features, data, train_records, val_records, pre)
    config["requested_strategy"] = requested
    config["advice"] = advice
    epochs = config["epochs"]
    distributed.check_same(config["data"]["fingerprint"], f"The images in {data_dir} differ between the machines of "
                           "this run: give every node the same copy of the data.")

    def prepare_run_dir() -> None:
        if state == "resume":
            _compare_with_saved(read_json(out / CONFIG), config, out)
        elif state == "replace":
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if state != "resume":
            atomic_write_json(out / CONFIG, config)
            atomic_write_json(out / LABELS, data.classes)

    distributed.from_main(prepare_run_dir)
    _say(show_progress, f"{strategy}: {model} ({'pretrained' if pretrained else 'random weights'}), "
                        f"{len(train_records)} train / {len(val_records)} val images, {len(data.classes)} classes, "
                        f"augment {'on' if augment else 'off'}, balance {balance} -> {out}")

    train_y = torch.tensor([r.label for r in train_records])
    val_y = torch.tensor([r.label for r in val_records])
    cache_report = None
    if on_features:
        train_feats, val_feats, cache_report = _features(plan, config, train_records, val_records, pre, augment,
                                                         views, seed, cache_dir if cache else None, batch_size,
                                                         workers, show_progress, use_cache=cache)
    val_views = ImageViews(val_records, pre)
    calibration = calibration_records(train_records, item_seed(seed, "batchnorm"))
    calibration_views = ImageViews(calibration, pre, [item_seed(seed, "batchnorm", i) for i in range(len(calibration))]
                                   if augment else None)

    optimizer = torch.optim.AdamW(param_groups(plan.model, lr, backbone_lr), weight_decay=WEIGHT_DECAY)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(class_weights) if class_weights else None).to(world.device)
    frozen_fp = tensors_fingerprint(frozen_state(plan))
    start, history = 0, []

    def read_checkpoint() -> dict | None:
        checkpoint = load_checkpoint(out) if state == "resume" else None
        if checkpoint is not None:
            if checkpoint["frozen_fingerprint"] != frozen_fp:
                raise ZooError(f"The pretrained weights of {model} changed since {out} was started: pass --force to "
                               "start over.")
            if set(checkpoint["model"]) != set(trainable_state(plan)):
                raise ZooError(f"{out / CHECKPOINT} does not match this model: pass --force to start over.")
        return checkpoint

    checkpoint = distributed.from_main(read_checkpoint)  # rank 0 reads it, every rank resumes from it
    if checkpoint is not None:
        plan.model.load_state_dict(checkpoint["model"], strict=False)
        optimizer.load_state_dict(checkpoint["optimizer"])
        start, history = checkpoint["epoch"], checkpoint["history"]
        _say(show_progress, f"resuming after epoch {start} of {epochs}")

    val_logits = None
    if strat.takes_layer:  # svm: one scikit-learn fit with cross-validated C replaces the epochs
        from zoo.training.linear_probe import fit_linear_probe

        tick = time.time()
        probe = fit_linear_probe(train_feats, train_y, class_weights, seed)
        probe.fold_into(plan.model.classifier)
        val_logits = predict_features(plan.model, val_feats)
        report = classification_report(val_logits, val_y, data.classes)
        train_logits = predict_features(plan.model, train_feats[0])
        history = [{"epoch": 1, "train_loss": float(nn.functional.cross_entropy(train_logits, train_y)),
                    "train_accuracy": probe.train_accuracy, "val_loss": report["loss"],
                    "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"], "lr": 0.0,
                    "backbone_lr": 0.0, "seconds": time.time() - tick}]
        config["svm"] = {"C": probe.c, "cv_accuracy": probe.cv_accuracy, "layer": layer,
                         "features": int(train_feats[0].shape[1])}
        if world.is_main:
            atomic_write_json(out / CONFIG, config)
        start = epochs
        _say(show_progress, f"svm on {layer}: C={probe.c:g} (cross-validated), train acc {probe.train_accuracy:.3f}, "
                            f"val acc {report['accuracy']:.3f}")
    # Several processes training on images: DDP. On cached features every rank trains the same small
    # classifier on all of them (no communication; milliseconds per epoch).
    parallel = distributed.DataParallel(plan.model) if world.distributed and not on_features else None
    for epoch in range(start, epochs):
        tick = time.time()
        # Data order, augmentation and dropout depend only on (seed, epoch): a resumed run repeats them.
        torch.manual_seed(item_seed(seed, "dropout", epoch))
        generator = torch.Generator().manual_seed(item_seed(seed, "order", epoch))
        order = epoch_order(train_y.tolist(), generator, balanced_sampling=balance == "sampler")
        if on_features:
            features = train_feats[epoch % len(train_feats)]  # cycle through the cached augmented views
            batches = shape_batches(order, None, batch_size)
            train_loss, train_acc = train_features_epoch(plan, features, train_y, batches, optimizer, loss_fn,
                                                         base_lrs, epoch, epochs)
            val_logits = predict_features(plan.model, val_feats)
        else:
            seeds = [item_seed(seed, "train", epoch, i) for i in range(len(train_records))] if augment else None
            views_ds = ImageViews(train_records, pre, seeds)
            batches = shape_batches(order, views_ds.shapes(), batch_size, generator)
            train_loss, train_acc = train_images_epoch(plan, views_ds, batches, optimizer, loss_fn, base_lrs, epoch,
                                                       epochs, workers, show_progress, parallel)
            if recalibrate(plan, calibration_views, batch_size, workers) and parallel is not None:
                parallel.sync_buffers()  # the ranks computed the same statistics; rank 0's make it exact
            val_logits = predict_images(plan.model, val_views, batch_size, workers, "validating", show_progress)
        report = classification_report(val_logits, val_y, data.classes)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": report["loss"], "val_accuracy": report["accuracy"],
                        "val_macro_f1": report["macro_f1"], "lr": optimizer.param_groups[0]["lr"],
                        "backbone_lr": optimizer.param_groups[-1]["lr"] if len(base_lrs) > 1 else 0.0,
                        "seconds": time.time() - tick})
        if world.is_main:
            save_checkpoint(out, {"epoch": epoch + 1, "model": trainable_state(plan),
                                  "optimizer": optimizer.state_dict(), "history": history, "frozen_fingerprint": frozen_fp})
            write_history(out / "history.csv", history)
        _say(show_progress, f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                            f"val loss {report['loss']:.4f} acc {report['accuracy']:.3f} "
                            f"macro-F1 {report['macro_f1']:.3f} | {history[-1]['seconds']:.1f} s")

    if val_logits is None:  # interrupted after the last checkpoint but before the files below
        val_logits = (predict_features(plan.model, val_feats) if on_features else
                      predict_images(plan.model, val_views, batch_size, workers, "validating", show_progress))
    metrics = classification_report(val_logits, val_y, data.classes)
    metrics.update({
        "images": {"train": len(train_records), "val": len(val_records), "skipped": len(skipped)},
        "skipped": skipped,
        "epochs": epochs,
        "epoch_seconds": [h["seconds"] for h in history],
        "wall_seconds": time.time() - started,
        "feature_cache": cache_report,
    })
    if world.distributed:  # proof that the ranks trained one model: a hash of each rank's final weights
        hashes = distributed.all_gather(tensors_fingerprint(plan.model.state_dict()))
        metrics["distributed"] = {"world_size": world.size, "backend": world.backend, "weights_sha256": hashes,
                                  "ranks_agree": len(set(hashes)) == 1}
        if len(set(hashes)) > 1 and world.is_main:
            print("warning: the processes ended with different weights; rank 0's are saved", file=sys.stderr)
    if world.is_main:
        _write_results(out, config, metrics, history, data.classes, plan)
    distributed.barrier()  # every process returns once the run directory is complete
    _say(show_progress, f"val accuracy {100 * metrics['accuracy']:.1f}% ({len(val_records)} images), macro-F1 "
                        f"{metrics['macro_f1']:.3f}, min recall {metrics['min_recall']:.3f}; run directory {out}")
    return metrics


def _config(model, spec, plan: Plan, strategy, pretrained, lr, backbone_lr, epochs, batch_size, augment, augment_views,
            balance, class_weights, seed, val_fraction, on_features, data, train_records, val_records, pre) -> dict:
    names = trainable_names(plan.model)
    params = dict(plan.model.named_parameters())
    classes = data.classes
    return {
        "model": model,
        "num_classes": len(classes),
        "layer": plan.layer,
        "preprocess": pre.to_json(),
        "strategy": strategy,
        "pretrained": pretrained,
        "freeze_until": plan.freeze_until,
        "frozen": list(plan.frozen),
        "lr": lr,
        "backbone_lr": backbone_lr,
        "optimizer": "AdamW",
        "weight_decay": WEIGHT_DECAY,
        "schedule": "cosine, per step",
        "batchnorm_recalibration": ({"layers": len(bn_layers), "images": min(CALIBRATION_IMAGES, len(train_records)),
                                     "views": "augmented" if augment else "inference",
                                     "when": "after every epoch, before validation and saving"}
                                    if (bn_layers := trainable_batchnorms(plan)) else None),
        "epochs": epochs,
        "batch_size": batch_size,
        "augment": augment,
        "augment_views": augment_views,
        "balance": balance,
        "class_weights": class_weights,
        "seed": seed,
        "val_fraction": val_fraction,
        "feature_cache": on_features,
        "trainable_parameters": {"count": sum(params[n].numel() for n in names), "names": names},
        "frozen_parameters": sum(p.numel() for n, p in params.items() if n not in set(names)),
        "data": {
            "dir": str(Path(data.root).resolve()),
            "presplit": data.presplit,
            "classes": classes,
            "train_counts": {c: sum(r.label == i for r in train_records) for i, c in enumerate(classes)},
            "val_counts": {c: sum(r.label == i for r in val_records) for i, c in enumerate(classes)},
            "fingerprint": dataset_fingerprint(train_records + val_records),
        },
        "backbone": {"family": spec.family, "feature_dim": spec.feature_dim, "stages": list(spec.stages)},
        "versions": {"torch": torch.__version__},
    }


def _features(plan: Plan, config: dict, train_records, val_records, pre, augment: bool, views: int, seed: int,
              cache_dir, batch_size: int, workers: int, show_progress: bool, use_cache: bool = True):
    """Bottleneck features of every training view and of the validation images, from the cache when possible."""
    tick = time.time()
    cache = (FeatureCache(Path(cache_dir) if cache_dir else default_cache_dir())) if use_cache else None
    common = dict(model_name=config["model"], weights=weights_fingerprint(plan.model), layer=plan.layer, seed=seed,
                  cache=cache, batch_size=batch_size, workers=workers, show_progress=show_progress)
    train_views = list(range(views)) if augment else [None]
    train_feats, hits = [], 0
    for v in train_views:
        what = "train features" if v is None else f"train features, view {v + 1}/{views}"
        feats, hit = cached_features(plan.model, train_records, pre, view=v, description=what, **common)
        train_feats.append(feats)
        hits += hit
    val_feats, hit = cached_features(plan.model, val_records, pre, view=None, description="val features", **common)
    hits += hit
    report = {"dir": str(cache.root) if cache else None, "entries": len(train_views) + 1, "from_cache": hits,
              "computed": len(train_views) + 1 - hits, "seconds": time.time() - tick}
    _say(show_progress, f"bottleneck features: {report['from_cache']} of {report['entries']} sets from the cache, "
                        f"{report['computed']} computed ({report['seconds']:.1f} s)")
    return train_feats, val_feats, report


def _write_results(out: Path, config: dict, metrics: dict, history: list[dict], classes: list[str], plan: Plan) -> None:
    """The finished run's files; the weights go last, since load_run treats them as 'the run finished'."""
    atomic_write_json(out / METRICS, metrics)
    write_history(out / "history.csv", history)
    title = f"{config['model']} · {config['strategy']} · val accuracy {100 * metrics['accuracy']:.1f}%"
    plot_confusion(metrics["confusion_matrix"], classes, out / "confusion.png", title)
    plot_curves(history, out / "curves.png", title)
    atomic_write_bytes(out / "model_card.md", model_card(config, metrics, classes).encode())
    save_weights(plan.model, out / WEIGHTS, metadata={"model": config["model"], "strategy": config["strategy"]})
    remove_checkpoint(out)
    for leftover in out.glob(".*.tmp"):  # temporary files of a process that was killed mid-write
        leftover.unlink(missing_ok=True)
