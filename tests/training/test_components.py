"""The engine's small parts: augmentation, batching by shape, balanced sampling, metrics."""
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.backbones import create_model, get_spec
from zoo.run_dir import load_run
from zoo.training.augment import augment
from zoo.training.datasets import epoch_order, shape_batches
from zoo.training.finetune import finetune
from zoo.training.metrics import classification_report

CFG = get_spec("efficientnet_lite0").preprocess_config()


def _photo(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(50, 50), (300, 120), (40, 400), (1000, 990)])
def test_augmented_views_are_square_at_the_inference_size_and_reproducible(size):
    img = _photo(*size)
    a, b, c = augment(img, CFG, 1), augment(img, CFG, 1), augment(img, CFG, 2)
    assert a.shape == (3, CFG.input_size, CFG.input_size) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augmentation_keeps_the_inference_scale():
    # An image already at the inference size is only cropped, flipped and colour-jittered: never rescaled.
    img = Image.new("RGB", (CFG.input_size, CFG.input_size), (128, 128, 128))
    img.paste((255, 0, 0), (100, 100, 120, 120))  # a 20-pixel red square
    for seed in range(5):
        arr = augment(img, CFG, seed)
        red = (arr[0] > arr[1] + 0.5).sum()
        assert red == 400, "the square keeps its 20x20 pixels"


def test_shape_batches_never_mix_shapes_and_keep_every_image_once():
    shapes = [(224, 224), (224, 300), (224, 224), (300, 224), (224, 300), (224, 224)]
    batches = shape_batches(range(6), shapes, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len({shapes[i] for i in b}) == 1 and len(b) <= 2 for b in batches)


def test_balanced_sampling_draws_classes_about_equally():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    drawn = Counter(labels[i] for i in epoch_order(labels, torch.Generator().manual_seed(0), balanced_sampling=True))
    assert all(abs(drawn[c] / 1000 - 1 / 3) < 0.06 for c in range(3))
    assert sorted(epoch_order(labels, torch.Generator().manual_seed(0), balanced_sampling=False)) == list(range(1000))


def test_metrics_by_hand():
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 4.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    report = classification_report(logits, y, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    assert report["accuracy"] == pytest.approx(5 / 6) and report["min_recall"] == pytest.approx(0.5)
    assert report["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert report["top_k"] == {"k": 2, "accuracy": pytest.approx(1.0)}


def test_head_also_freezes_a_torchvision_backbone_with_a_pretrained_conv_head(tiny_textures, tmp_path):
    # MobileNetV3 keeps a Linear + Hardswish after pooling (pre_logits): part of the frozen base.
    finetune(tiny_textures, model="mobilenet_v3_small", pretrained=False, strategy="head", epochs=2, cache=False,
             augment=True, batch_size=8, seed=3, out=tmp_path / "run")
    torch.manual_seed(3)
    initial = create_model("mobilenet_v3_small", num_classes=3, pretrained=False).state_dict()
    trained = load_run(tmp_path / "run").model.state_dict()
    assert any(k.startswith("pre_logits.") for k in trained)
    for key, value in trained.items():
        assert torch.equal(value, initial[key]) != key.startswith("classifier."), key
