"""Pretrained weights really load: real ImageNet validation photos, real top-1."""
import subprocess
import sys

import pytest

from zoo.backbones.imagenet_check import check_pretrained, packaged_imagenet_photos


@pytest.mark.parametrize("name,minimum",
                         [("efficientnet_lite0", 16), ("efficientnet_lite1", 17), ("efficientnet_lite2", 17)])
def test_efficientnet_lite_classifies_imagenet_photos(name, minimum):
    assert packaged_imagenet_photos() is not None, "the foolbox wheel (a test dependency) ships the photos"
    result = check_pretrained(name)
    assert result["images"] == 20
    assert result["top1_correct"] >= minimum, result["predictions"]


def test_missing_torchvision_weights_offline_is_one_clear_sentence(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "models", "check", "resnet18"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "resnet18-f37072fd.pth" in lines[0] and str(tmp_path / "empty-cache") in lines[0]
