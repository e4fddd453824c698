"""BatchNorm statistics recomputed for the weights that training ended an epoch with.

While the network trains, each BatchNorm layer normalises with the statistics of the current batch
and keeps a running average for inference. That average mixes batches seen under earlier weights,
and EfficientNet-Lite's TensorFlow momentum (0.01) keeps most of the ImageNet statistics for
hundreds of steps: measured on 400 digits after 3 full fine-tuning epochs, val accuracy was 46%
with the running statistics and 68% with fresh batch statistics. So before every validation (and
so before the weights are saved, exported and served) the trainable BatchNorm layers get exact
averages over a fixed set of training images, in the views training normalised: augmented square
crops in full batches when augmentation is on, the inference view otherwise.

The pass runs in fp32 whatever the training precision, because the statistics are those of the fp32
network that validation, export and serving run: recomputed under bf16 autocast for the same weights
(a digits500 `full` run), they moved by up to 0.18 standard deviations and the fp32 model then scored
60.1% instead of 74.5% on 2,000 held-out digits, with BatchNorm itself in fp32 as well (59.9%); bf16
would have been 1.6 to 1.8x faster in two runs (benchmarks/recalibration_precision.py).

Written here rather than with torch.optim.swa_utils.update_bn, which resets every BatchNorm layer
of the model: the frozen stages' statistics must stay bit-identical to the pretrained ones.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.hardware import Compute
from zoo.training.datasets import ImageRecord, ImageViews, batch_shapes, loader, shape_batches
from zoo.training.strategies import Plan, is_frozen

CALIBRATION_IMAGES = 512  # exact statistics of 512 images; more changes them by well under 1%


def trainable_batchnorms(plan: Plan) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for name, m in plan.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and not is_frozen(plan, name)]


def calibration_records(records: list[ImageRecord], seed: int) -> list[ImageRecord]:
    """A seeded sample of the training images, the same in every epoch, process and resumed run."""
    if len(records) <= CALIBRATION_IMAGES:
        return list(records)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_IMAGES]
    return [records[i] for i in sorted(order.tolist())]


@torch.no_grad()
def recalibrate(plan: Plan, views: ImageViews, batch_size: int, workers: int) -> int:
    """Replace the trainable BatchNorm layers' running statistics; returns how many layers changed.

    Leaves the model in eval mode. Every process runs every batch, so under torchrun the ranks
    compute the same statistics.
    """
    layers = trainable_batchnorms(plan)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    plan.model.eval()  # dropout off, frozen BatchNorm layers keep normalising with their statistics
    for m in layers:
        m.reset_running_stats()
        m.train()
    device = next(plan.model.parameters()).device
    batches = shape_batches(range(len(views)), views.shapes(), batch_size)
    seen = 0
    compute = Compute(device, "fp32", "" if device.type == "cuda" else "contiguous")
    with compute.shaped_pass(plan.model, batch_shapes(views, batches)) as shaped:  # on a GPU: a layout for the shapes
        for x, _ in loader(views, batches, workers, compute.pin_memory):
            # An average weighted by batch size (PyTorch's momentum=None weights batches equally, and
            # images of an unusual shape form batches of one or two).
            for m in layers:
                m.momentum = len(x) / (seen + len(x))
            plan.model(shaped.batch(x))
            seen += len(x)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    plan.model.eval()
    return len(layers)
