"""Export with dynamic batch, height and width for every registry backbone (random weights: the
architecture is what is under test), and for an earlier-layer (`svm`) run.

A representative subset runs in the default suite; the whole registry runs in a slow test (CI runs it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import export_run
from export_runs import make_run
from zoo.backbones import list_specs
from zoo.run_dir import load_run

# One of each kind of trouble: residual stages (resnet18), a pre-logits block after pooling and
# hard-swish (mobilenet_v3_small). efficientnet_lite0 with its SAME padding is exported in test_export.py.
REPRESENTATIVE = ["resnet18", "mobilenet_v3_small"]
ALL = [s.name for s in list_specs()]


@pytest.fixture(scope="module")
def textures_small(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "textures"
    write_sample("textures", out, seed=0, limit=60, show_progress=False)
    return out


def _check_export(run_dir: Path, out: Path, report: dict) -> None:
    p = report["parity"]
    assert p["ok"], p
    assert p["max_abs_logits"] <= 1e-4 and p["top1_agreement"] == 1.0
    run = load_run(run_dir)
    # Sizes the parity check did not use, odd and tiny included: nothing was baked in at export time.
    x = torch.randn(3, 3, 65, 131)
    with torch.no_grad():
        features = run.model.forward_features(x)
        logits = run.model.forward_head(features)
    (o_logits,) = ort.InferenceSession(str(out / "classifier.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": x.numpy()})
    (o_features,) = ort.InferenceSession(str(out / "features.onnx"), providers=["CPUExecutionProvider"]).run(
        ["features"], {"image": x.numpy()})
    assert o_features.shape == tuple(features.shape)
    scale = max(1.0, float(logits.abs().max()))
    assert np.abs(o_logits - logits.numpy()).max() <= 1e-4 * scale


def _export_backbone(name: str, data_dir: Path, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", data_dir, model_name=name, pretrained=False, train=False, record_data=False)
    out = tmp_path / "export"
    report = export_run(run_dir, out)
    assert report["val_accuracy"].get("skipped")  # no data recorded: parity ran on packaged photos
    _check_export(run_dir, out, report)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_export_representative_backbones(name, textures_small, tmp_path):
    _export_backbone(name, textures_small, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ALL)
def test_export_every_backbone(name, textures_small, tmp_path):
    _export_backbone(name, textures_small, tmp_path)


def test_export_earlier_layer_run(textures_small, tmp_path):
    """The `svm` strategy's model: a linear classifier on pooled activations of an earlier stage."""
    run_dir = make_run(tmp_path / "run", textures_small, model_name="efficientnet_lite0", layer="stage3")
    out = tmp_path / "export"
    report = export_run(run_dir, out)
    _check_export(run_dir, out, report)
    assert report["layer"] == "stage3" and report["feature_dim"] == 40
    assert report["val_accuracy"]["delta_points"] == pytest.approx(0.0, abs=0.5)

