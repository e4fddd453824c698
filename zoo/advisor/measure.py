"""Measurements the advisor uses, taken from a sample of the images and the pretrained network.

- BatchNorm shift: how far the target images' activation statistics sit from the running
  statistics every BatchNorm layer learned on the source data (mean per-channel KL divergence
  between the two Gaussians; 0 when the data looks like the source).
- Source confidence: the mean top-1 probability of the source (ImageNet) classifier.
The third component, the share of textured pixels, needs no network (zoo.advisor.pixels). Separability by
depth, reported beside them, comes from the evidence (zoo.advisor.evidence): the held-out accuracy of a
linear classifier on each stage's pooled activations.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from zoo.backbones import ZooModel
from zoo.data.folder import ImageFolderData, Sample
from zoo.errors import ZooError
from zoo.hardware import Compute
from zoo.preprocess import ImageError, PreprocessConfig, preprocess
from zoo.progress import progress_bar


@dataclass
class Probe:
    images: int
    unreadable: list[str]
    bn_kl: float | None  # mean over BatchNorm layers; None for backbones without BatchNorm
    source_confidence: float | None  # None when the backbone has no pretrained source classifier
    stage_accuracy: dict[str, float] = field(default_factory=dict)
    textured_pixels: float | None = None  # zoo.advisor.pixels: mean share of pixels that are not flat fill


def probe_sample(data: ImageFolderData, per_class: int, seed: int) -> list[Sample]:
    """A class-balanced, seeded sample of training images."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in data.train:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        picked += items[:per_class]
    return picked


Moments = tuple[int, torch.Tensor, torch.Tensor]  # count, per-channel mean, per-channel (population) variance


def _merge(a: Moments, b: Moments) -> Moments:
    """Mean and variance of two groups together (Chan et al.'s parallel update)."""
    n = a[0] + b[0]
    delta = b[1] - a[1]
    mean = a[1] + delta * (b[0] / n)
    var = (a[0] * a[2] + b[0] * b[2] + delta * delta * (a[0] * b[0] / n)) / n
    return n, mean, var


class BatchNormInputStats:
    """Forward hooks that accumulate per-channel mean and variance of every BatchNorm's input, over the
    first `max_images` images that pass (all of them when None)."""

    def __init__(self, model: nn.Module, max_images: int | None = None):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.sums: list[Moments | None] = [None] * len(self.layers)
        self.images = [0] * len(self.layers)
        self.max_images = max_images
        self.handles = [bn.register_forward_hook(self._hook(i)) for i, bn in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            if self.max_images is not None and self.images[i] >= self.max_images:
                return
            self.images[i] += inputs[0].shape[0]
            x = inputs[0].detach()
            if x.shape[2] * x.shape[3] >= 1024:
                # Every other row and column of the large early maps: neighbouring activations are nearly
                # equal, so the moments hardly move, and these maps held most of the hooks' cost.
                x = x[:, :, ::2, ::2]
            # One fused pass in the activation's own precision (a float64 sum of x*x cost as much as the
            # forward pass itself); batches are then merged in float64 with Chan's pairwise formula.
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            s = (x.shape[0] * x.shape[2] * x.shape[3], mean.double(), var.double())
            self.sums[i] = s if (before := self.sums[i]) is None else _merge(before, s)
        return hook

    def mean_kl(self) -> float | None:
        for h in self.handles:
            h.remove()
        kls: list[float] = []
        for bn, s in zip(self.layers, self.sums, strict=True):
            if s is None or bn.running_var is None or bn.running_mean is None:
                continue
            _, mean, var = s
            var = var.clamp_min(1e-8)
            source_var = bn.running_var.double() + bn.eps
            kl = 0.5 * (torch.log(source_var / var) + (var + (mean - bn.running_mean.double()) ** 2) / source_var - 1)
            kls.append(kl.mean().item())
        return float(np.mean(kls)) if kls else None


@torch.no_grad()
def probe(model: ZooModel, has_source_head: bool, samples: list[Sample], cfg: PreprocessConfig, seed: int = 0,
          batch_size: int = 16) -> Probe:
    """One forward pass per sampled image collects all three measurements."""
    model.eval()
    bn_stats = BatchNormInputStats(model)
    labels, confidence, unreadable = [], [], []
    arrays, kept = [], []
    for sample in samples:
        try:
            arrays.append(preprocess(sample.path, cfg))
            kept.append(sample)
        except ImageError as e:
            unreadable.append(f"{sample.path}: {e}")
    # Images of one shape share a forward pass (no padding, so nothing leaks between images).
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, a in enumerate(arrays):
        by_shape[a.shape].append(i)
    batches = [idx[j:j + batch_size] for idx in by_shape.values() for j in range(0, len(idx), batch_size)]
    device = next(model.parameters()).device
    # NHWC on the CPU, where oneDNN's kernels run it faster (zoo.hardware.Compute.channels_last), with the same
    # values up to rounding; on a GPU the layout that suits these batches' shapes (Compute.shaped_pass). The
    # caller may run it under autocast (the moments are merged in float64).
    compute = Compute(device, "fp32", "channels_last" if device.type == "cpu" else "")
    if device.type != "cuda":  # on a GPU shaped_pass sets it
        model.to(memory_format=torch.channels_last if compute.channels_last else torch.contiguous_format)
    try:
        with compute.shaped_pass(model, [(len(idx), *arrays[idx[0]].shape) for idx in batches]) as shaped:
            for idx in progress_bar(batches, "measuring similarity"):
                x = shaped.batch(torch.from_numpy(np.stack([arrays[i] for i in idx])))
                for stage in model.stages.values():
                    x = stage(x)
                if has_source_head:
                    logits = model.forward_head(model.pre_logits(x.mean((2, 3))))
                    confidence += logits.softmax(1).max(1).values.tolist()
                labels += [kept[i].label for i in idx]
    finally:
        kl = bn_stats.mean_kl()
    if not labels:
        raise ZooError("None of the sampled images could be read: check the files with `zoo data inspect`.")
    return Probe(images=len(labels), unreadable=unreadable, bn_kl=kl if labels else None,
                 source_confidence=float(np.mean(confidence)) if confidence else None,
                 stage_accuracy={})  # filled from the evidence's held-out scores
