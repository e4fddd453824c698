"""Where the CPU time of training goes, side by side in one run: feature extraction and svm's C search.

- extraction images/s on the same images: zoo's extractor (what `head`, `svm` and the advisor run:
  ONNX Runtime when it measured faster, torch otherwise), raw ONNX Runtime on an exported
  features.onnx (the ceiling: no data loading beyond preprocessing, no caching), and torch eager;
- svm's fit, the cross-validated C search plus the final fit, on 3,000 x 1,280 bottleneck features
  of handwritten digits (the size the issue measured at about 250 s).

    python benchmarks/training_speed.py [--images 400] [--svm-images 3000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _records(data: Path, limit: int):
    from zoo.backbones import get_spec
    from zoo.data.folder import load_image_folder
    from zoo.training.datasets import scan_images

    cfg = get_spec("efficientnet_lite0").preprocess_config()
    found, _ = scan_images(load_image_folder(data).train[:limit], cfg, "checking images")
    return found, cfg


def extraction(data: Path, limit: int, work: Path) -> dict[str, float]:
    """images/s of the three ways to compute bottleneck features of the same images."""
    from export.onnx_export import export_run
    from zoo.backbones import create_model
    from zoo.inference import open_session
    from zoo.preprocess import preprocess
    from zoo.training import ort_features
    from zoo.training.datasets import ImageViews
    from zoo.training.feature_cache import FeatureCache, cached_layer_features, extract_features
    from zoo.training.finetune import finetune

    records, cfg = _records(data, limit)
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    # The extractor's graph is made once per backbone and weights (and reported); not part of the rate.
    ort_features.extractor(model, "efficientnet_lite0", None, cfg.input_size)
    rates = {}
    tick = time.perf_counter()
    cached_layer_features(model, records, cfg, model_name="efficientnet_lite0", layers=[None], view=None, seed=0,
                          cache=FeatureCache(work / "zoo-cache"), batch_size=32, workers=0, description="zoo")
    rates["zoo extractor"] = len(records) / (time.perf_counter() - tick)

    os.environ[ort_features.ENGINE_ENV] = "torch"
    tick = time.perf_counter()
    extract_features(model, ImageViews(records, cfg), [None], 32, 0, "torch eager")
    rates["torch eager"] = len(records) / (time.perf_counter() - tick)
    os.environ.pop(ort_features.ENGINE_ENV)

    run = work / "run"
    finetune(data, strategy="head", epochs=1, out=run, cache_dir=work / "run-cache")
    export_run(run, work / "export")
    session = open_session(work / "export" / "features.onnx")
    tick = time.perf_counter()
    arrays = [preprocess(r.path, cfg) for r in records]
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for a in arrays:
        by_shape.setdefault(a.shape, []).append(a)
    for group in by_shape.values():
        for i in range(0, len(group), 32):
            session.run(["features"], {"image": np.stack(group[i:i + 32])})
    rates["raw ONNX Runtime"] = len(records) / (time.perf_counter() - tick)
    return rates


def svm_fit_seconds(data: Path, n: int, work: Path) -> tuple[float, tuple[int, int]]:
    from zoo.backbones import create_model
    from zoo.training.feature_cache import FeatureCache, cached_layer_features
    from zoo.training.linear_probe import fit_linear_probe

    records, cfg = _records(data, n)
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    found, _ = cached_layer_features(model, records, cfg, model_name="efficientnet_lite0", layers=[None], view=None,
                                     seed=0, cache=FeatureCache(work / "svm-cache"), batch_size=32, workers=0,
                                     description="svm features")
    features, labels = found[None], torch.tensor([r.label for r in records])
    tick = time.perf_counter()
    fit_linear_probe([features], labels, seed=0)
    return time.perf_counter() - tick, tuple(features.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="images for the extraction rates")
    ap.add_argument("--svm-images", type=int, default=3000)
    args = ap.parse_args()
    from zoo.data.samples import write_sample

    with tempfile.TemporaryDirectory(prefix="zoo-speed-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ZOO_CACHE_DIR", str(work / "home-cache"))
        write_sample("textures", work / "textures")
        rates = extraction(work / "textures", args.images, work)
        base = rates["raw ONNX Runtime"]
        print("\nbottleneck extraction, efficientnet_lite0, same images:")
        for name, rate in rates.items():
            print(f"  {name:<17} {rate:7.1f} images/s  {rate / base:5.2f}x raw ONNX Runtime")
        write_sample("digits", work / "digits")
        seconds, shape = svm_fit_seconds(work / "digits", args.svm_images, work)
        print(f"\nsvm fit (C by 5-fold grouped CV over 5 values, then the final fit) on {shape[0]} x {shape[1]} "
              f"features: {seconds:.1f} s")


if __name__ == "__main__":
    main()
