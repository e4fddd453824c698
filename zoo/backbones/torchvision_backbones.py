"""torchvision backbones, cut into named stages; weights through torchvision's weights API.

Weights are never downloaded implicitly: they load from torchvision's cache (TORCH_HOME) or
ZOO_WEIGHTS_DIR, and `zoo models fetch NAME` downloads them on a machine that is online.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from zoo.backbones.model import ZooModel
from zoo.backbones.registry import BackboneSpec, PretrainedCfg, WeightsSource, register
from zoo.errors import ZooError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_enum(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def weights_dirs() -> list[Path]:
    """Where zoo looks for torchvision weight files, in order."""
    dirs = []
    if os.environ.get("ZOO_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["ZOO_WEIGHTS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")  # torchvision's own cache (TORCH_HOME)
    return dirs


def weights_filename(name: str) -> str:
    return Path(weights_enum(name).url).name


def locate_weights(name: str) -> Path | None:
    for d in weights_dirs():
        if (d / weights_filename(name)).is_file():
            return d / weights_filename(name)
    return None


def fetch_weights(name: str) -> Path:
    """Download through torchvision's own API into its cache (needs a network)."""
    weights_enum(name).get_state_dict(progress=True, check_hash=True)
    path = locate_weights(name)
    assert path is not None
    return path


def _seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


def _feature_groups(features: nn.Sequential, groups: dict[str, tuple[int, int]]) -> OrderedDict[str, nn.Module]:
    """Slices of a torchvision `features` Sequential as named stages (half-open index ranges)."""
    return OrderedDict((name, _seq(*[features[i] for i in range(a, b)])) for name, (a, b) in groups.items())


def _resnet_stages(m) -> tuple:
    stages = OrderedDict(stem=_seq(m.conv1, m.bn1, m.relu, m.maxpool), layer1=m.layer1, layer2=m.layer2,
                         layer3=m.layer3, layer4=m.layer4)
    return stages, None, m.fc, 0.0


def _mobilenet_v2_stages(m) -> tuple:
    groups = dict(stem=(0, 1), stage1=(1, 2), stage2=(2, 4), stage3=(4, 7), stage4=(7, 11), stage5=(11, 14),
                  stage6=(14, 17), stage7=(17, 18), head_conv=(18, 19))
    return _feature_groups(m.features, groups), None, m.classifier[1], m.classifier[0].p


def _mobilenet_v3_stages(groups: dict) -> Callable:
    def cut(m) -> tuple:
        # torchvision's MobileNetV3 keeps a pretrained 1x1 "conv head" (Linear + Hardswish) after pooling;
        # it stays part of the backbone, so the bottleneck is its output.
        pre_logits = _seq(m.classifier[0], m.classifier[1])
        return _feature_groups(m.features, groups), pre_logits, m.classifier[3], m.classifier[2].p
    return cut


def _efficientnet_b0_stages(m) -> tuple:
    groups = {"stem": (0, 1), **{f"stage{i}": (i, i + 1) for i in range(1, 8)}, "head_conv": (8, 9)}
    return _feature_groups(m.features, groups), None, m.classifier[1], m.classifier[0].p


def _convnext_stages(m) -> tuple:
    groups = dict(stem=(0, 1), stage1=(1, 2), stage2=(2, 4), stage3=(4, 6), stage4=(6, 8))
    ln2d = m.classifier[0]
    norm = nn.LayerNorm(ln2d.normalized_shape, eps=ln2d.eps)  # LayerNorm2d on a 1x1 map == LayerNorm on the vector
    norm.load_state_dict(ln2d.state_dict())
    return _feature_groups(m.features, groups), norm, m.classifier[2], 0.0


def _vgg_stages(m) -> tuple:
    # VGG's 4096-wide FC layers need a fixed 7x7 map; zoo pools globally instead, so they are dropped
    # and the bottleneck is the 512-channel pooled conv output.
    groups = dict(block1=(0, 5), block2=(5, 10), block3=(10, 17), block4=(17, 24), block5=(24, 31))
    stages = _feature_groups(m.features, groups)
    source_head = nn.Linear(512, 1000)  # no pretrained 512->1000 classifier exists for VGG
    return stages, None, source_head, 0.5


def _densenet_stages(m) -> tuple:
    f = m.features
    stages = OrderedDict(
        stem=_seq(f.conv0, f.norm0, f.relu0, f.pool0),
        block1=_seq(f.denseblock1, f.transition1), block2=_seq(f.denseblock2, f.transition2),
        block3=_seq(f.denseblock3, f.transition3), block4=_seq(f.denseblock4, f.norm5, nn.ReLU()),
    )
    return stages, None, m.classifier, 0.0


def _register_tv(name: str, family: str, cut: Callable, stages: tuple[str, ...], feature_dim: int, params: int,
                 freeze_until: str, source_head_pretrained: bool = True) -> None:
    w = weights_enum(name)
    tf = w.transforms()
    cfg = PretrainedCfg(int(tf.crop_size[0]), IMAGENET_MEAN, IMAGENET_STD, tf.interpolation.value)

    def build(num_classes: int | None = None, pretrained: bool = True) -> ZooModel:
        tv_model = torchvision.models.get_model(name, weights=None)
        if pretrained:
            path = locate_weights(name)
            if path is None:
                where = weights_dirs()[-1]
                raise ZooError(
                    f"Pretrained weights for {name} are not on this machine: put {weights_filename(name)} in {where} "
                    f"(or in $ZOO_WEIGHTS_DIR), or run `zoo models fetch {name}` where there is a network.")
            state = torch.load(path, map_location="cpu", weights_only=True)
            tv_model.load_state_dict(state, strict=True)
        stages, pre_logits, source_head, drop = cut(tv_model)
        model = ZooModel(stages, feature_dim, 1000, pre_logits=pre_logits, drop_rate=drop, name=name)
        if source_head.out_features == 1000:
            model.classifier = source_head
        if num_classes is not None:
            model.reset_classifier(num_classes)
        return model

    register(BackboneSpec(
        name=name, family=family, build=build, pretrained_cfg=cfg,
        weights=WeightsSource("torchvision", lambda: locate_weights(name), f"torchvision {w}",
                              weights_filename(name), str(weights_dirs()[-1])),
        feature_dim=feature_dim, stages=stages, params=params, default_freeze_until=freeze_until,
        notes="" if source_head_pretrained else "no pretrained ImageNet classifier after global pooling",
    ))


_MNV3_SMALL = dict(stem=(0, 1), stage1=(1, 2), stage2=(2, 4), stage3=(4, 7), stage4=(7, 9), stage5=(9, 12),
                   head_conv=(12, 13))
_MNV3_LARGE = dict(stem=(0, 1), stage1=(1, 2), stage2=(2, 4), stage3=(4, 7), stage4=(7, 11), stage5=(11, 13),
                   stage6=(13, 16), head_conv=(16, 17))

# Stage names are listed, not found by building each network: importing the registry must stay cheap.
# tests/test_registry.py checks that every built model has exactly these stages.
_RESNET = ("stem", "layer1", "layer2", "layer3", "layer4")
_MNV2 = ("stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head_conv")
_EFFNET = _MNV2
_CONVNEXT = ("stem", "stage1", "stage2", "stage3", "stage4")
_VGG = ("block1", "block2", "block3", "block4", "block5")
_DENSENET = ("stem", "block1", "block2", "block3", "block4")

_register_tv("resnet18", "resnet", _resnet_stages, _RESNET, 512, 11689512, "layer2")
_register_tv("resnet34", "resnet", _resnet_stages, _RESNET, 512, 21797672, "layer2")
_register_tv("resnet50", "resnet", _resnet_stages, _RESNET, 2048, 25557032, "layer2")
_register_tv("mobilenet_v2", "mobilenet", _mobilenet_v2_stages, _MNV2, 1280, 3504872, "stage4")
_register_tv("mobilenet_v3_small", "mobilenet", _mobilenet_v3_stages(_MNV3_SMALL), tuple(_MNV3_SMALL), 1024,
             2542856, "stage3")
_register_tv("mobilenet_v3_large", "mobilenet", _mobilenet_v3_stages(_MNV3_LARGE), tuple(_MNV3_LARGE), 1280,
             5483032, "stage4")
_register_tv("efficientnet_b0", "efficientnet", _efficientnet_b0_stages, _EFFNET, 1280, 5288548, "stage4")
_register_tv("convnext_tiny", "convnext", _convnext_stages, _CONVNEXT, 768, 28589128, "stage2")
_register_tv("vgg16", "vgg", _vgg_stages, _VGG, 512, 15227688, "block3", source_head_pretrained=False)
_register_tv("densenet121", "densenet", _densenet_stages, _DENSENET, 1024, 7978856, "block2")
