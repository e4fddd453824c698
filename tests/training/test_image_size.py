"""`--image-size N|auto`: the rule, the checks, and the chosen size carried through a real run, its export
and the edge runtime."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.backbones import get_spec
from zoo.errors import UsageError, ZooError
from zoo.training.finetune import finetune
from zoo.training.image_size import FINETUNE_FLOOR, TINY_SIDE, auto_size, choose_preprocess, parse_image_size

NATIVE = get_spec("efficientnet_lite0").preprocess_config()
REPO = Path(__file__).resolve().parents[2]


def test_parse_accepts_auto_and_pixels_and_refuses_the_rest_in_one_sentence():
    assert parse_image_size("auto") is None and parse_image_size("AUTO") is None
    assert parse_image_size("160") == 160 and parse_image_size(96) == 96
    for bad, says in (("large", "must be auto or a whole number"), ("16", "outside 32-1024"),
                      ("4096", "outside 32-1024"), ("1.5", "must be auto or a whole number")):
        with pytest.raises(UsageError, match=says) as e:  # exit status 2
            parse_image_size(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("sides,native,expected", [
    ([72] * 9, 224, FINETUNE_FLOOR),      # emoji: not blown up to 224, but not below the floor either
    ([150, 150, 151], 224, FINETUNE_FLOOR),
    ([TINY_SIDE] * 3, 224, FINETUNE_FLOOR),
    ([28] * 9, 224, 224),                 # tiny images (digits) fine-tune at the native size
    ([TINY_SIDE - 1] * 3, 224, 224),
    ([200, 210, 205], 260, 224),          # rounded up to a multiple of 32 (a backbone made at 260 px)
    ([300, 500, 224], 224, 224),          # large images keep the native size
    ([20, 20, 600, 600, 600], 224, 224),  # the median decides, not the smallest image
    ([], 224, 224),                       # nothing to measure: the native size
])
def test_fine_tuning_shrinks_small_images_to_the_measured_floor(sides, native, expected):
    size, reason = auto_size(sides, native, every_layer_learns=True)
    assert size == expected and reason


def test_frozen_pretrained_layers_keep_the_native_size():
    expected = (224, "frozen pretrained layers read the images at the backbone's native 224 px")
    assert auto_size([28] * 9, 224, every_layer_learns=False) == expected


def test_the_chosen_config_changes_only_the_size():
    cfg, record = choose_preprocess(NATIVE, "96", [400])
    assert cfg.input_size == 96 and cfg.longer_side_cap == 192
    assert (cfg.mean, cfg.std, cfg.interpolation) == (NATIVE.mean, NATIVE.std, NATIVE.interpolation)
    assert record == {"requested": "96", "size": 96, "native": 224, "reason": "--image-size 96"}
    assert choose_preprocess(NATIVE, "auto", [500], every_layer_learns=True)[0] == NATIVE


def test_a_run_at_another_size_trains_exports_and_predicts_at_it(tiny_textures, tmp_path):
    from zoo.export.onnx_export import export_run

    out = tmp_path / "run"
    metrics = finetune(tiny_textures, strategy="head", epochs=3, augment=False, image_size="96", out=out)
    config = json.loads((out / "config.json").read_text())
    assert config["preprocess"]["input_size"] == 96 and config["image_size"]["size"] == 96
    export_run(out, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "preprocess.json").read_text())["input_size"] == 96
    # The edge runtime (ONNX Runtime and preprocess.json, no torch) reproduces the run's val accuracy.
    script = ("import json, sys\nfrom zoo.data.folder import load_image_folder\nfrom zoo.edge import EdgeModel\n"
              f"data = load_image_folder({str(tiny_textures)!r})\nedge = EdgeModel({str(tmp_path / 'export')!r})\n"
              "res = edge.predict([s.path for s in data.val], top_k=1)\n"
              "print(sum(r.label == edge.labels[s.label] for r, s in zip(res, data.val)) / len(data.val))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(metrics["accuracy"])
    # A resumed run must train at the size it started with.
    (out / "metrics.json").unlink()
    with pytest.raises(ZooError, match="started at 96 px.*--image-size 96"):
        finetune(tiny_textures, strategy="head", epochs=3, augment=False, image_size="128", out=out, resume=True)


def test_auto_fine_tunes_small_images_below_the_native_size(tiny_textures, tmp_path):
    # crops of 55-153 px, median shorter side 74 px: between TINY_SIDE and FINETUNE_FLOOR
    # partial keeps early stages frozen, so it stays native like head; only full leaves the native size
    for strategy, size in (("full", FINETUNE_FLOOR), ("partial", NATIVE.input_size), ("head", NATIVE.input_size)):
        out = tmp_path / strategy
        finetune(tiny_textures, strategy=strategy, epochs=1, augment=False, out=out)
        config = json.loads((out / "config.json").read_text())
        assert config["image_size"]["requested"] == "auto" and config["preprocess"]["input_size"] == size, strategy
    assert "median shorter side" in json.loads((tmp_path / "full" / "config.json").read_text())["image_size"]["reason"]
