"""Probe first, then fine-tune (`--warm-head`): `full` and `partial` start from a classifier fitted on frozen features.

A new classifier starts random. In the first steps of fine-tuning its large, random gradients flow
into the pretrained layers and pull their features apart before the classifier has learnt anything
(Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
ICLR 2022, who call the remedy LP-FT). With `--warm-head` the classifier is first trained the way
`head` trains it: on the frozen backbone's pooled bottleneck features (the feature cache, through
ONNX Runtime where that is faster), with head's epochs and rate, over the same training views; it
costs one feature pass per view. It is off by default because it did not measure better: with
benchmarks/strategies.py over one or two seeds on six sets, `full` gained 4.5 points on the
28-pixel silhouettes and lost 3.8 on faces, 4.2 on emoji and 1.0 on photos, and `partial` moved by
under a point on average (the README's "Probe first").
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.log import get_logger
from zoo.training.augment import item_seed
from zoo.training.datasets import epoch_order, shape_batches
from zoo.training.feature_cache import bottleneck_views
from zoo.training.loop import predict_features, train_features_epoch
from zoo.training.recipe import WEIGHT_DECAY
from zoo.training.strategies import Plan, get_strategy

if TYPE_CHECKING:
    from zoo.training.options import Resolved
    from zoo.training.recipe import Recipe, TrainingData

log = get_logger(__name__)


def fit_classifier(plan: Plan, views: Sequence[torch.Tensor], labels: torch.Tensor, *, seed: int, batch_size: int,
                   balanced_sampling: bool = False, class_weights: list[float] | None = None) -> float:
    """Train plan.model's classifier alone on cached features, with head's recipe; its train accuracy.

    Only the classifier's parameters are given to the optimizer, so nothing pretrained moves; the run's own
    optimizer starts afterwards with fresh state."""
    head = get_strategy("head")
    classifier = plan.model.classifier
    device = next(classifier.parameters()).device
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=head.default_lr, weight_decay=WEIGHT_DECAY)
    base_lrs = [head.default_lr]
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(class_weights) if class_weights else None).to(device)
    accuracy = 0.0
    for epoch in range(head.default_epochs):
        torch.manual_seed(item_seed(seed, "warm-head dropout", epoch))
        generator = torch.Generator().manual_seed(item_seed(seed, "warm-head order", epoch))
        order = epoch_order(labels.tolist(), generator, balanced_sampling=balanced_sampling)
        batches = shape_batches(order, None, batch_size)
        _, accuracy = train_features_epoch(plan, views[epoch % len(views)], labels, batches, optimizer, loss_fn,
                                           base_lrs, epoch, head.default_epochs)
    return accuracy


def warm_start(run: Resolved, data: TrainingData, plan: Plan, recipe: Recipe) -> dict[str, Any]:
    """Fit the run's classifier on the frozen backbone's features before the first epoch; what config.json
    records about it. The val accuracy is reported, never used to choose anything."""
    o, tick = run.options, time.time()
    train_feats, val_feats, cache = bottleneck_views(
        plan, o.model, data.train, data.val, data.preprocess, views=recipe.augment_views, seed=o.seed,
        cache_dir=o.cache_dir if o.cache else None, use_cache=o.cache, batch_size=o.batch_size, workers=run.workers)
    labels = torch.tensor([r.label for r in data.train])
    train_accuracy = fit_classifier(plan, train_feats, labels, seed=o.seed, batch_size=o.batch_size,
                                    balanced_sampling=recipe.balance == "sampler", class_weights=recipe.class_weights)
    val_y = torch.tensor([r.label for r in data.val])
    val_accuracy = float((predict_features(plan.model, val_feats).argmax(1) == val_y).float().mean())
    report = {"views": len(train_feats), "epochs": get_strategy("head").default_epochs,
              "train_accuracy": train_accuracy, "val_accuracy": val_accuracy, "seconds": time.time() - tick,
              "feature_cache": cache}
    log.info(f"warm head: the classifier fitted on frozen features first (train acc {train_accuracy:.3f}, val acc "
             f"{val_accuracy:.3f}, {report['seconds']:.1f} s); fine-tuning starts from it")
    return report
