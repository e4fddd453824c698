"""`--image-size N|auto`: the rule, the checks, and the chosen size carried through a real run."""
from __future__ import annotations

import json

import pytest

from zoo.backbones import get_spec
from zoo.errors import ZooError
from zoo.training.finetune import finetune
from zoo.training.image_size import FEATURES_FLOOR, FINETUNE_FLOOR, auto_size, choose_preprocess, parse_image_size

NATIVE = get_spec("efficientnet_lite0").preprocess_config()


def test_parse_accepts_auto_and_pixels_and_refuses_the_rest_in_one_sentence():
    assert parse_image_size("auto") is None and parse_image_size("AUTO") is None
    assert parse_image_size("160") == 160 and parse_image_size(96) == 96
    for bad, says in (("large", "must be auto or a whole number"), ("16", "outside 32-1024"),
                      ("4096", "outside 32-1024"), ("1.5", "must be auto or a whole number")):
        with pytest.raises(ZooError, match=says) as e:
            parse_image_size(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("sides,expected", [
    ([28] * 9, FEATURES_FLOOR),           # digits: not blown up to 224, but not below the floor either
    ([150, 150, 151], 160),               # rounded up to a multiple of 32
    ([300, 500, 224], 224),               # large images keep the native size
    ([20, 20, 600, 600, 600], 224),       # the median decides, not the smallest image
    ([], 224),                            # nothing to measure: the native size
])
def test_auto_keeps_native_size_for_large_images_and_shrinks_for_small_ones(sides, expected):
    size, reason = auto_size(sides, 224)
    assert size == expected and reason


def test_a_backbone_that_learns_gets_the_higher_floor():
    assert auto_size([28] * 9, 224, trains_backbone=True)[0] == FINETUNE_FLOOR > FEATURES_FLOOR
    assert auto_size([210] * 9, 224, trains_backbone=True)[0] == 224  # never above the native size


def test_the_chosen_config_changes_only_the_size():
    cfg, record = choose_preprocess(NATIVE, "96", [400])
    assert cfg.input_size == 96 and cfg.longer_side_cap == 192
    assert (cfg.mean, cfg.std, cfg.interpolation) == (NATIVE.mean, NATIVE.std, NATIVE.interpolation)
    assert record == {"requested": "96", "size": 96, "native": 224, "reason": "--image-size 96"}
    assert choose_preprocess(NATIVE, "auto", [500])[0] == NATIVE


def test_a_run_trains_and_records_at_the_chosen_size(tiny_textures, tmp_path):
    out = tmp_path / "run"
    finetune(tiny_textures, strategy="head", epochs=1, image_size="96", out=out)
    config = json.loads((out / "config.json").read_text())
    assert config["preprocess"]["input_size"] == 96 and config["image_size"]["size"] == 96
    # A resumed run must train at the size it started with.
    (out / "metrics.json").unlink()
    with pytest.raises(ZooError, match="started at 96 px.*--image-size 96"):
        finetune(tiny_textures, strategy="head", epochs=1, image_size="128", out=out, resume=True)


def test_auto_trains_small_images_below_the_native_size(tmp_path):
    from zoo.data.samples import write_sample

    write_sample("digits", tmp_path / "digits", seed=0, limit=60)  # 28-px images
    out = tmp_path / "run"
    finetune(tmp_path / "digits", strategy="head", epochs=1, augment=False, out=out)
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"]["requested"] == "auto" and "28 px" in config["image_size"]["reason"]
    assert config["preprocess"]["input_size"] == FEATURES_FLOOR < NATIVE.input_size
