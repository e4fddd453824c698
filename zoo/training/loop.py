"""One epoch of training (on images, or on cached features) and prediction, read top to bottom."""
from __future__ import annotations

import math
import torch
from torch import nn

from zoo.backbones import ZooModel
from zoo.progress import progress_bar
from zoo.training.datasets import ImageViews, loader, shape_batches
from zoo.training.strategies import Plan, train_mode


def cosine(fraction: float) -> float:
    """Learning-rate multiplier: 1 at the start of training, about 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], fraction: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * cosine(fraction)


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_images_epoch(plan: Plan, dataset: ImageViews, batches: list[list[int]], optimizer: torch.optim.Optimizer,
                       loss_fn: nn.Module, base_lrs: list[float], epoch: int, epochs: int, workers: int,
                       show_progress: bool = True) -> tuple[float, float]:
    """Mean loss and accuracy over the epoch's batches; the backbone runs on every batch."""
    train_mode(plan)
    total_loss, correct, seen = 0.0, 0, 0
    data = loader(dataset, batches, workers)
    for b, (x, y) in enumerate(progress_bar(data, f"epoch {epoch + 1}/{epochs}", total=len(batches),
                                            enabled=show_progress)):
        set_lr(optimizer, base_lrs, (epoch + b / len(batches)) / epochs)
        logits = plan.model(x)
        loss = loss_fn(logits, y)
        _step(optimizer, loss)
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen


def train_features_epoch(plan: Plan, features: torch.Tensor, labels: torch.Tensor, batches: list[list[int]],
                         optimizer: torch.optim.Optimizer, loss_fn: nn.Module, base_lrs: list[float], epoch: int,
                         epochs: int) -> tuple[float, float]:
    """The same epoch on cached features: only the classifier runs, the backbone never does."""
    train_mode(plan)  # the classifier's dropout is active, as it is when training on images
    total_loss, correct = 0.0, 0
    for b, idx in enumerate(batches):
        set_lr(optimizer, base_lrs, (epoch + b / len(batches)) / epochs)
        y = labels[idx]
        logits = plan.model.forward_head(features[idx])
        loss = loss_fn(logits, y)
        _step(optimizer, loss)
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    seen = sum(len(i) for i in batches)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict_images(model: ZooModel, dataset: ImageViews, batch_size: int, workers: int, description: str,
                   show_progress: bool = True) -> torch.Tensor:
    """Logits in dataset order; equal-shape batches, eval mode, so each prediction is the one serving makes."""
    model.eval()
    batches = shape_batches(range(len(dataset)), dataset.shapes(), batch_size)
    out = torch.empty(len(dataset), model.num_classes)
    bar = progress_bar(loader(dataset, batches, workers), description, total=len(batches), enabled=show_progress)
    for (x, _), idx in zip(bar, batches):  # the bar first, so it sees its last item finish
        out[idx] = model(x)
    return out


@torch.no_grad()
def predict_features(model: ZooModel, features: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.forward_head(features)

