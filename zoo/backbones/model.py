"""ZooModel: a backbone cut into named stages, global average pooling, and a replaceable classifier.

The whole transfer-learning surface is `forward_features`, `forward_head` and
`reset_classifier`; the named stages are what users freeze or tap for activations.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ZooModel(nn.Module):
    def __init__(
        self,
        stages: OrderedDict[str, nn.Module],
        feature_dim: int,
        num_classes: int,
        pre_logits: nn.Module | None = None,
        drop_rate: float = 0.0,
        name: str = "",
    ):
        super().__init__()
        self.name = name
        self.stages = nn.ModuleDict(stages)
        # Runs on the pooled vector; holds pretrained layers some backbones keep between pooling and
        # the classifier (ConvNeXt's LayerNorm, MobileNetV3's 1x1 "conv head").
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()
        self.feature_dim = feature_dim
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(feature_dim, num_classes)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward_stages(self, x: torch.Tensor, until: str | None = None) -> torch.Tensor:
        """Feature map after stage `until` (default: the last stage)."""
        for name, stage in self.stages.items():
            x = stage(x)
            if name == until:
                return x
        if until is not None and until not in self.stages:
            raise KeyError(until)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck vector: globally pooled last-stage activations (any H, W >= 32)."""
        return self._tail(self.forward_stages(x), head=False)

    def _tail(self, x: torch.Tensor, head: bool) -> torch.Tensor:
        """Pooling, pre-logits and, with `head`, the classifier, on the last feature map.

        Under autocast they run in fp32 (the usual mixed-precision practice for logits and the loss):
        beside the stages they cost nothing, and bf16 training lost less for it. `full` on digits500,
        held-out test accuracy on 2,000 digits over seeds 0-3 against the fp32 loop: -0.78 points with
        bf16 logits, -0.46 with these in fp32 (benchmarks/results/finetune_seeds_digits500_full_test2000*).
        """
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._tail(x.float(), head)
        x = self.pre_logits(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return self.forward_head(x) if head else x

    def forward_pooled(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        """Globally pooled activations of an earlier stage (used by the `svm` strategy)."""
        x = self.forward_stages(x, until=stage)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return features
        return self.classifier(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(self.forward_stages(x), head=True)

    def reset_classifier(self, num_classes: int) -> None:
        """Drop the old classifier and add a fresh one sized to the user's classes."""
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def backbone_parameters(self):
        """Everything except the classifier: the pretrained part."""
        for name, p in self.named_parameters():
            if not name.startswith("classifier."):
                yield p

    def truncated(self, stage: str, num_classes: int | None = None) -> ZooModel:
        """A model that ends at `stage`: its pooled activations feed a new linear classifier.

        The `svm` strategy uses it; modules are shared with this model, not copied.
        """
        if stage not in self.stages:
            raise KeyError(stage)
        names = self.stage_names[: self.stage_names.index(stage) + 1]
        channels = self.stage_channels()[stage]
        kept = OrderedDict((n, self.stages[n]) for n in names)
        return ZooModel(kept, channels, num_classes or self.num_classes, drop_rate=0.0, name=self.name)

    @torch.no_grad()
    def stage_channels(self, size: int = 64) -> OrderedDict[str, int]:
        """Channels of every stage's output, found by one small forward pass."""
        was_training = self.training
        self.eval()
        out: OrderedDict[str, int] = OrderedDict()
        x = torch.zeros(1, 3, size, size)
        for name, stage in self.stages.items():
            x = stage(x)
            out[name] = x.shape[1]
        self.train(was_training)
        return out
