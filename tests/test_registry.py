"""Every backbone builds, pools any input size to feature_dim, and its metadata is complete and true."""
import pytest
import torch
import torchvision

from zoo.backbones import create_model, get_spec, list_specs
from zoo.backbones.registry import register
from zoo.errors import UsageError

NAMES = [s.name for s in list_specs()]
REQUIRED = {"name", "family", "params", "feature_dim", "input_size", "mean", "std", "stages", "weights"}


def test_catalogue_has_the_13_required_backbones():
    required = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet34", "resnet50",
                "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
                "vgg16", "densenet121"}
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_build_with_7_classes_pools_odd_sizes_and_matches_metadata(name):
    spec = get_spec(name)
    meta = spec.to_json()
    assert REQUIRED <= set(meta) and {"source", "available"} <= set(meta["weights"])
    assert len(meta["mean"]) == len(meta["std"]) == 3 and meta["input_size"] >= 32
    model = create_model(name, num_classes=7, pretrained=False).eval()
    assert model.stage_names == list(spec.stages)
    assert spec.default_freeze_until in spec.stages
    # 7 classes, not 1000: a wrong head size cannot hide behind ImageNet's.
    assert model.classifier.out_features == 7 and model.classifier.in_features == spec.feature_dim
    backbone = sum(p.numel() for p in model.backbone_parameters())
    assert backbone + spec.feature_dim * 1000 + 1000 == spec.params
    with torch.no_grad():
        for h, w in [(160, 224), (257, 193)]:
            x = torch.randn(2, 3, h, w)
            feats = model.forward_features(x)
            assert feats.shape == (2, spec.feature_dim)
            assert model.forward_head(feats).shape == (2, 7)
            assert torch.equal(model.forward_head(feats, pre_logits=True), feats)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("name", [n for n in NAMES if get_spec(n).weights.source == "torchvision" and n != "vgg16"])
def test_parameter_count_agrees_with_torchvision_metadata(name):
    # Where zoo keeps torchvision's architecture whole, its count must equal torchvision's own record.
    w = torchvision.models.get_model_weights(name).DEFAULT
    assert get_spec(name).params == w.meta["num_params"]


def test_duplicate_names_are_refused():
    spec = get_spec("resnet18")
    with pytest.raises(ValueError, match="already registered"):
        register(spec)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UsageError, match="Unknown model 'resnet19'"):  # exit status 2
        get_spec("resnet19")


def test_lite_weights_are_available_offline():
    for i in range(3):
        assert get_spec(f"efficientnet_lite{i}").weights.available
