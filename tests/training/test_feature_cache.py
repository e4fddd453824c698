"""The bottleneck-feature cache: computed once, reused by later epochs and runs, invalidated by any key."""
import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from zoo.backbones import ZooModel, create_model, get_spec
from zoo.training.feature_cache import FeatureCache, weights_fingerprint
from zoo.training.finetune import finetune

KEY = dict(dataset="d" * 64, model="efficientnet_lite0", weights="w" * 64, layer=None, view="inference")


def _head(data: Path, out: Path, **kw) -> dict:
    return finetune(data, strategy="head", epochs=3, augment=False, out=out, **kw)


def test_every_key_part_changes_the_key(tmp_path):
    cache = FeatureCache(tmp_path)
    pre = get_spec("efficientnet_lite0").preprocess_config()
    base = cache.key(preprocess=pre, **KEY)
    for part, value in [("dataset", "e" * 64), ("model", "efficientnet_lite1"), ("weights", "x" * 64),
                        ("layer", "stage3"), ("view", "augment-v1-seed0-view0")]:
        assert cache.key(preprocess=pre, **{**KEY, part: value}) != base, part
    assert cache.key(preprocess=dataclasses.replace(pre, input_size=240), **KEY) != base
    assert cache.key(preprocess=pre, **KEY) == base


def test_weights_fingerprint_sees_a_single_changed_statistic():
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    before = weights_fingerprint(model)
    model.classifier.weight.data += 1  # the classifier is not part of the backbone's weights
    assert weights_fingerprint(model) == before
    model.stages["stage3"][0].bn1.running_var[0] += 1e-6
    assert weights_fingerprint(model) != before


def test_later_epochs_and_later_runs_never_run_the_backbone(tiny_textures, tmp_path, monkeypatch):
    first = _head(tiny_textures, tmp_path / "a")
    calls = []
    original = ZooModel.forward_features
    monkeypatch.setattr(ZooModel, "forward_features", lambda self, x: calls.append(len(x)) or original(self, x))
    second = _head(tiny_textures, tmp_path / "b")
    assert calls == [], "a warm cache must not run the backbone at all"
    assert second["feature_cache"]["computed"] == 0 and second["feature_cache"]["from_cache"] == 2
    assert second["confusion_matrix"] == first["confusion_matrix"] and second["loss"] == pytest.approx(first["loss"])


def test_changed_image_or_weights_invalidate_the_cache(tiny_copy, tmp_path, monkeypatch):
    _head(tiny_copy, tmp_path / "warm")
    victim = sorted((tiny_copy / "train" / "brick").glob("*.png"))[0]
    Image.open(victim).rotate(90, expand=True).save(victim)
    changed = _head(tiny_copy, tmp_path / "changed-image")
    assert changed["feature_cache"]["computed"] == 1 and changed["feature_cache"]["from_cache"] == 1  # val unchanged
    # torch extracts: an ONNX graph of random weights would be made for this run alone (test_ort_features covers it)
    monkeypatch.setenv("ZOO_FEATURE_ENGINE", "torch")
    random_weights = _head(tiny_copy, tmp_path / "random-weights", pretrained=False)
    assert random_weights["feature_cache"]["computed"] == 2


def test_a_damaged_cache_file_is_recomputed(tiny_textures, tmp_path):
    cache_dir = tmp_path / "cache"
    first = _head(tiny_textures, tmp_path / "a", cache_dir=cache_dir)
    for entry in cache_dir.rglob("*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    again = _head(tiny_textures, tmp_path / "b", cache_dir=cache_dir)
    assert again["feature_cache"]["computed"] == 2
    assert again["confusion_matrix"] == first["confusion_matrix"]
    assert _head(tiny_textures, tmp_path / "c", cache_dir=cache_dir)["feature_cache"]["computed"] == 0
