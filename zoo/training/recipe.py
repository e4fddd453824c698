"""The data a run trains on, and its recipe: every number the training loop will use, fixed once.

`load_data` decodes every image once (unreadable ones are skipped, reported and counted);
`make_recipe` settles what still depended on the data (augmentation, balance, learning rates,
epochs) and builds the model the strategy plans; `run_config` is what config.json records, and
what a resumed run must match.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zoo.backbones.registry import create_model
from zoo.cpu_memory import mode_for
from zoo.data.folder import ImageFolderData, load_image_folder
from zoo.errors import UsageError, ZooError
from zoo.log import get_logger
from zoo.preprocess import PreprocessConfig
from zoo.thresholds import is_small
from zoo.training import distributed
from zoo.training.balance import class_weights, resolve_balance
from zoo.training.batchnorm import CALIBRATION_IMAGES, trainable_batchnorms
from zoo.training.datasets import ImageRecord, at_size, scan_images
from zoo.training.feature_cache import dataset_fingerprint
from zoo.training.image_size import choose_preprocess
from zoo.training.options import Resolved
from zoo.training.strategies import BACKBONE_LR_FACTOR, Plan, apply_freeze, trainable_names

log = get_logger(__name__)
WEIGHT_DECAY = 1e-4
# Options that change the result: a resumed run must use the values it was started with.
RESUME_KEYS = ("model", "strategy", "pretrained", "freeze_until", "layer", "epochs", "lr", "backbone_lr", "batch_size",
               "augment", "augment_views", "balance", "seed", "val_fraction", "test_fraction", "feature_cache",
               "num_classes", "preprocess", "patience", "warm_head")
RECORDED_BEFORE = {"warm_head": False}  # what a run directory older than the key was started with


@dataclass(frozen=True)
class TrainingData:
    folder: ImageFolderData
    preprocess: PreprocessConfig
    train: list[ImageRecord]
    val: list[ImageRecord]
    skipped: list[dict[str, str]]  # {path, reason} of every unreadable file
    image_size: dict[str, Any] | None = None  # --image-size: asked, chosen and why
    test: list[ImageRecord] = field(default_factory=list)  # held out: scored once, at the end, never chosen on

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    def counts(self, records: list[ImageRecord]) -> list[int]:
        return [sum(r.label == i for r in records) for i in range(len(self.classes))]


@dataclass(frozen=True)
class Recipe:
    """How the run trains, with every default resolved."""

    epochs: int
    lr: float
    backbone_lr: float  # 0 when no pretrained weight trains
    augment: bool
    augment_views: int | None  # views per image in the feature cache (augmented feature runs only)
    balance: str  # "none", "sampler" or "loss"
    class_weights: list[float] | None  # the loss weights of balance "loss"
    on_features: bool  # only the classifier learns, on cached bottleneck features
    warm_head: bool = False  # the classifier is fitted on frozen features before fine-tuning (zoo.training.warm_head)


def load_data(run: Resolved) -> TrainingData:
    o = run.options
    folder = load_image_folder(o.data_dir, val_fraction=o.val_fraction, seed=o.seed, test_fraction=o.test_fraction)
    native = run.spec.preprocess_config()
    train, skipped = scan_images(folder.train, native, "checking train images")
    val, skipped_val = scan_images(folder.val, native, "checking val images")
    test, skipped_test = scan_images(folder.test, native, "checking test images") if folder.test else ([], [])
    skipped += skipped_val + skipped_test
    # The size is read off the training images only, like every other choice (the val split reports).
    pre, image_size = choose_preprocess(native, o.image_size, [min(r.stored) for r in train],
                                        run.strategy.every_layer_learns)
    train, val, test = at_size(train, pre), at_size(val, pre), at_size(test, pre)
    if distributed.world().is_main:
        for bad in skipped:
            log.warning(f"skipping {bad['path']}: {bad['reason']}")
    data = TrainingData(folder, pre, train, val, skipped, image_size, test)
    counts = data.counts(train)
    if 0 in counts:
        raise ZooError(f"Class {data.classes[counts.index(0)]!r} has no readable training image: add images to its "
                       f"folder in {o.data_dir} or remove the folder.")
    if not val:
        raise ZooError(f"{o.data_dir} leaves no readable validation image: add a val/ folder or more images per class.")
    return data


def make_plan(run: Resolved, data: TrainingData) -> Plan:
    """The model with its new classifier, frozen where the strategy says; seeded, so a resumed run
    rebuilds exactly the same random parts."""
    o = run.options
    torch.manual_seed(o.seed)
    net = create_model(o.model, num_classes=len(data.classes), pretrained=o.pretrained)
    plan = run.strategy.plan(net, run.spec, o.layer if run.strategy.takes_layer else o.freeze_until)
    apply_freeze(plan)
    run.compute.prepare(plan.model)  # --device (one GPU per process under torchrun with nccl)
    return plan


def make_recipe(run: Resolved, data: TrainingData, plan: Plan) -> Recipe:
    o, strategy = run.options, run.strategy
    augment = is_small(len(data.train)) if o.augment is None else o.augment
    balance = resolve_balance(o.balance, data.counts(data.train))
    # svm always fits on extracted features (cached on disk unless --no-cache).
    on_features = plan.on_cached_features and (o.cache or strategy.takes_layer)
    lr = o.lr or strategy.default_lr
    backbone_lr = o.backbone_lr or (lr * BACKBONE_LR_FACTOR if o.pretrained else lr)
    if not any(p.requires_grad for p in plan.model.backbone_parameters()):
        backbone_lr = 0.0  # nothing pretrained trains (head): say so rather than record an unused rate
    # Probe first where pretrained layers fine-tune under a new classifier (full, partial).
    warm_head = o.warm_head and o.pretrained and backbone_lr > 0 and not on_features
    return Recipe(epochs=o.epochs or strategy.default_epochs, lr=lr, backbone_lr=backbone_lr, augment=augment,
                  augment_views=o.views if (augment and (on_features or warm_head)) else None, balance=balance,
                  class_weights=class_weights(data.counts(data.train)) if balance == "loss" else None,
                  on_features=on_features, warm_head=warm_head)


def _trainable(plan: Plan) -> dict[str, Any]:
    names = trainable_names(plan.model)
    params = dict(plan.model.named_parameters())
    bn_layers = trainable_batchnorms(plan)
    return {
        "trainable_parameters": {"count": sum(params[n].numel() for n in names), "names": names},
        "frozen_parameters": sum(p.numel() for n, p in params.items() if n not in set(names)),
        "bn_layers": len(bn_layers),
    }


def run_config(run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe) -> dict[str, Any]:
    """config.json: the resolved configuration, what trains, the data it saw and the advice behind it."""
    o, spec, classes = run.options, run.spec, data.classes
    trainable = _trainable(plan)
    return {
        "model": o.model, "num_classes": len(classes), "layer": plan.layer, "preprocess": data.preprocess.to_json(),
        "image_size": data.image_size,
        "strategy": run.strategy.name, "pretrained": o.pretrained, "freeze_until": plan.freeze_until,
        "frozen": list(plan.frozen), "lr": recipe.lr, "backbone_lr": recipe.backbone_lr, "optimizer": "AdamW",
        "weight_decay": WEIGHT_DECAY, "schedule": "cosine, per step",
        "batchnorm_recalibration": ({"layers": trainable["bn_layers"],
                                     "images": min(CALIBRATION_IMAGES, len(data.train)),
                                     "views": "augmented" if recipe.augment else "inference",
                                     "when": "after every epoch, before validation and saving"}
                                    if trainable["bn_layers"] else None),
        "epochs": recipe.epochs, "batch_size": o.batch_size, "augment": recipe.augment,
        "augment_views": recipe.augment_views, "balance": recipe.balance, "class_weights": recipe.class_weights,
        "seed": o.seed, "val_fraction": o.val_fraction, "test_fraction": o.test_fraction,
        "test_split": data.folder.test_source, "patience": o.patience, "feature_cache": recipe.on_features,
        "warm_head": recipe.warm_head,
        "trainable_parameters": trainable["trainable_parameters"],
        "frozen_parameters": trainable["frozen_parameters"],
        "data": {
            "dir": str(Path(data.folder.root).resolve()),
            "presplit": data.folder.presplit,
            "classes": classes,
            "train_counts": dict(zip(classes, data.counts(data.train), strict=True)),
            "val_counts": dict(zip(classes, data.counts(data.val), strict=True)),
            "test_counts": dict(zip(classes, data.counts(data.test), strict=True)),
            "fingerprint": dataset_fingerprint(data.train + data.val + data.test),
        },
        "backbone": {"family": spec.family, "feature_dim": spec.feature_dim, "stages": list(spec.stages)},
        "versions": {"torch": torch.__version__},
        "compute": {**run.compute.describe(), "cpu_allocator": mode_for(run.compute.device.type)},
        "requested_strategy": run.requested_strategy,
        "advice": run.advice,
    }


def check_resumable(saved: dict[str, Any], config: dict[str, Any], out: Path) -> None:
    """A resumed run must be the run that was started: same options, same images."""
    for key in RESUME_KEYS:
        if key == "preprocess" and saved.get(key) != config.get(key):
            size = (saved.get(key) or {}).get("input_size")
            raise UsageError(f"{out} was started at {size} px, and these options train at "
                             f"{config[key]['input_size']} px: resume with --image-size {size}, or pass --force to "
                             "start over.")
        started = saved.get(key, RECORDED_BEFORE.get(key))
        if started != config.get(key):
            raise UsageError(f"{out} was started with {key}={started!r}, not {config.get(key)!r}: resume "
                             "with the options it was started with, or pass --force to start over.")
    if saved["data"]["fingerprint"] != config["data"]["fingerprint"]:
        raise ZooError(f"The images in {config['data']['dir']} changed since {out} was started: pass --force to "
                       "start over.")
