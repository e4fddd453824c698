"""One epoch of training (on images, or on cached features) and prediction, read top to bottom."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from zoo.backbones import ZooModel
from zoo.hardware import CPU_FP32, Compute
from zoo.progress import progress_bar
from zoo.training import distributed
from zoo.training.datasets import ImageViews, batch_shapes, loader, shape_batches
from zoo.training.distributed import DataParallel, Share
from zoo.training.strategies import Plan, train_mode


def cosine(fraction: float) -> float:
    """Learning-rate multiplier: 1 at the start of training, about 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], fraction: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base * cosine(fraction)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()  # fp16: scaled so small gradients do not underflow, unscaled before the step
    scaler.step(optimizer)
    scaler.update()


def train_images_epoch(plan: Plan, dataset: ImageViews, batches: list[list[int]], optimizer: torch.optim.Optimizer,
                       loss_fn: nn.Module, base_lrs: list[float], epoch: int, epochs: int, workers: int,
                       parallel: DataParallel | None = None, deadline: float | None = None,
                       compute: Compute = CPU_FP32, scaler: torch.amp.GradScaler | None = None) -> tuple[float, float]:
    """Mean loss and accuracy over the epoch's batches; the backbone runs on every batch.

    With `parallel` (several processes), `batches` are the global batches: this rank runs its share
    of each through DDP, and the figures are summed over the ranks. With `deadline` (time.monotonic(),
    one process only: auto's pilots) the epoch stops after the batch that passes it. The forward pass
    and the loss run under `compute`'s autocast; `scaler` scales fp16 losses.
    """
    train_mode(plan)
    total_loss, correct, seen = 0.0, 0.0, 0.0
    net: nn.Module = plan.model
    shares: list[Share] | None = None
    if parallel is not None:
        weight: torch.Tensor | None = getattr(loss_fn, "weight", None)
        class_weights = weight.tolist() if weight is not None else None
        net, shares = parallel.ddp, parallel.shares(batches, [r.label for r in dataset.records], class_weights)
    data = loader(dataset, batches if shares is None else [s.indices for s in shares], workers, compute.pin_memory)
    with compute.training_pass(plan.model):  # on a CPU under autocast: depthwise convolutions in fp32
        for b, (x, y) in enumerate(progress_bar(data, f"epoch {epoch + 1}/{epochs}", total=len(batches))):
            if deadline is not None and seen and time.monotonic() > deadline:
                break
            set_lr(optimizer, base_lrs, (epoch + b / len(batches)) / epochs)
            x, y = compute.batch(x), y.to(compute.device, non_blocking=compute.pin_memory)
            share = shares[b] if shares is not None and parallel is not None else None
            if share is not None and parallel is not None:
                parallel.begin(share)
            with compute.autocast():
                logits = net(x)
                loss = loss_fn(logits, y)
            if share is None or parallel is None:
                _step(optimizer, loss, scaler)
                total_loss += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            else:
                _step(optimizer, loss * parallel.loss_scale(share), scaler)
                total_loss += loss.item() * share.fraction * share.size  # this rank's part of the batch's loss sum
                correct += int((logits.argmax(1) == y).sum()) if share.images else 0
                seen += share.images
    if parallel is not None:
        total_loss, correct, seen = parallel.sum_over_ranks(total_loss, correct, seen)
        parallel.sync_buffers()
    return total_loss / seen, correct / seen


def train_features_epoch(plan: Plan, features: torch.Tensor, labels: torch.Tensor, batches: list[list[int]],
                         optimizer: torch.optim.Optimizer, loss_fn: nn.Module, base_lrs: list[float], epoch: int,
                         epochs: int) -> tuple[float, float]:
    """The same epoch on cached features: only the classifier runs, the backbone never does (one small
    linear layer: fp32 on any device, where autocast would only add casts)."""
    train_mode(plan)  # the classifier's dropout is active, as it is when training on images
    total_loss, correct, device = 0.0, 0, _device(plan.model)
    for b, idx in enumerate(batches):
        set_lr(optimizer, base_lrs, (epoch + b / len(batches)) / epochs)
        y = labels[idx].to(device)
        logits = plan.model.forward_head(features[idx].to(device))
        loss = loss_fn(logits, y)
        _step(optimizer, loss)
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    seen = sum(len(i) for i in batches)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict_images(model: ZooModel, dataset: ImageViews, batch_size: int, workers: int,
                   description: str, compute: Compute | None = None) -> torch.Tensor:
    """Logits in dataset order; equal-shape batches, eval mode and fp32, so each prediction is the one serving makes.

    Several processes share the batches out and gather the logits, so every rank gets all of them.
    """
    model.eval()
    compute = (compute or Compute(_device(model), "fp32")).for_evaluation
    batches = distributed.my_batches(shape_batches(range(len(dataset)), dataset.shapes(), batch_size))
    chunks = []
    bar = progress_bar(loader(dataset, batches, workers, compute.pin_memory), description, total=len(batches))
    with compute.shaped_pass(model, batch_shapes(dataset, batches)) as shaped:  # on a GPU: a layout for the shapes
        for (x, _), idx in zip(bar, batches, strict=True):  # the bar first, so it sees its last item finish
            with shaped.autocast():
                chunks.append((idx, model(shaped.batch(x)).float().cpu()))
    out = torch.empty(len(dataset), model.num_classes)
    for idx, logits in distributed.gather_chunks(chunks):
        out[idx] = logits
    return out


@torch.no_grad()
def predict_features(model: ZooModel, features: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.forward_head(features.to(_device(model))).cpu()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

