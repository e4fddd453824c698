"""BatchNorm recalibration: trainable layers get the exact statistics of the calibration images under
the current weights; frozen layers keep the pretrained statistics bit for bit."""
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.backbones import create_model, get_spec
from zoo.data.folder import Sample
from zoo.training import datasets
from zoo.training.batchnorm import CALIBRATION_IMAGES, calibration_records, recalibrate, trainable_batchnorms
from zoo.training.datasets import ImageViews, KeptViews, scan_images
from zoo.training.strategies import apply_freeze, frozen_state, get_strategy, is_frozen

SPEC = get_spec("efficientnet_lite0")


def _images(tmp_path, n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):  # dark, high-contrast pictures, far from ImageNet's statistics
        arr = (rng.random((64, 64, 3)) > 0.9).astype(np.uint8) * 255
        path = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(path)
        samples.append(Sample(path, i % 2))
    return samples


@pytest.mark.parametrize("batch_size", [4, 5])  # 5: batches of 5, 5 and 2, weighted by their size
def test_recalibration_gives_exact_statistics_and_leaves_frozen_layers_alone(tmp_path, batch_size):
    torch.manual_seed(0)
    plan = get_strategy("partial").plan(create_model(SPEC.name, num_classes=2, pretrained=True), SPEC, "stage3")
    apply_freeze(plan)
    frozen_before = {k: v.clone() for k, v in frozen_state(plan).items()}
    pre = SPEC.preprocess_config()
    records, bad = scan_images(_images(tmp_path, 12), pre)
    assert not bad
    views = ImageViews(records, pre)

    # What the first trainable layer's statistics should be: the mean and variance of its input over
    # the 12 images. Its input comes through frozen layers only, which normalise with their own
    # statistics in both passes, so the reference below is independent of the code under test.
    layers = trainable_batchnorms(plan)
    first, inputs = layers[0], []
    hook = first.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    plan.model.eval()
    with torch.no_grad():
        plan.model(torch.stack([views[i][0] for i in range(len(views))]))
    hook.remove()
    before = {m: (m.running_mean.clone(), m.momentum) for m in layers}

    assert recalibrate(plan, views, batch_size=batch_size, workers=0) == len(layers) > 10
    assert not plan.model.training
    x = inputs[0].double()
    torch.testing.assert_close(first.running_mean.double(), x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # BatchNorm keeps each batch's unbiased variance; the statistics weight them by batch size.
    chunks = [x[i:i + batch_size] for i in range(0, 12, batch_size)]
    var = sum(len(c) * c.var(dim=(0, 2, 3), unbiased=True) for c in chunks) / 12
    torch.testing.assert_close(first.running_var.double(), var, rtol=1e-3, atol=1e-5)
    for m in layers:  # every trainable layer has new statistics and its own momentum back
        assert not torch.equal(m.running_mean, before[m][0]) and torch.isfinite(m.running_var).all()
        assert m.momentum == before[m][1]
    after = frozen_state(plan)
    assert frozen_before.keys() == after.keys() and len(after) > 0
    assert all(torch.equal(frozen_before[k], after[k]) for k in after)
    assert any(is_frozen(plan, n) for n, m in plan.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_calibration_images_are_a_fixed_seeded_sample():
    records = list(range(3 * CALIBRATION_IMAGES))
    a, b = calibration_records(records, 1), calibration_records(records, 1)
    assert a == b and len(a) == CALIBRATION_IMAGES and a == sorted(a)
    assert calibration_records(records, 2) != a
    assert calibration_records(records[:10], 1) == records[:10]


def test_calibration_crops_are_made_once_and_kept_within_the_memory_budget(tmp_path, monkeypatch):
    pre = SPEC.preprocess_config()
    records, _ = scan_images(_images(tmp_path, 6), pre)
    seeds = list(range(100, 106))
    made = []
    real_augment = datasets.augment
    monkeypatch.setattr(datasets, "augment", lambda img, cfg, seed: made.append(seed) or real_augment(img, cfg, seed))
    plain, kept = ImageViews(records, pre, seeds), KeptViews(records, pre, seeds)
    first = [kept[i] for i in range(6)]
    assert kept.keeps and len(made) == 6
    for _ in range(2):  # every later epoch reads the kept crops, equal to freshly made ones
        for i in range(6):
            (x, y), (fresh_x, fresh_y) = kept[i], plain[i]
            assert torch.equal(x, fresh_x) and y == fresh_y
    assert len(made) == 6 + 12  # the plain views made theirs again, the kept ones did not
    assert all(kept[i][0] is first[i][0] for i in range(6))
    small = KeptViews(records, pre, seeds, budget_bytes=3 * 4 * 224 * 224 * 5)  # room for five crops: keeps none
    made.clear()
    _ = [small[i] for i in range(6)] + [small[i] for i in range(6)]
    assert not small.keeps and len(made) == 12
