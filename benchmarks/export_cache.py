"""Exporting a run of an architecture traced before: a fresh trace vs the export cache, side by side.

A first run (the backbone's packaged weights, or seeded random ones, and a seeded classifier) is
exported once, which fills the cache. A second run of the same architecture with other weights (all
of them: random, another seed) is then exported `--repeats` times with the cache off
(ZOO_EXPORT_GRAPH_CACHE=0: torch's trace every time) and as often with it on, alternating the two
so that background load falls on both alike. The files and the ONNX Runtime val accuracy are the
same either way (checked), and parity passes on every export.

    python benchmarks/export_cache.py [--model efficientnet_lite0] [--repeats 3]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path


def prepare(work: Path, model_name: str, name: str, seed: int, pretrained: bool) -> tuple[Path, Path]:
    import torch

    from zoo.atomic import atomic_write_json
    from zoo.backbones import create_model, get_spec
    from zoo.data.samples import write_sample
    from zoo.run_dir import mark_complete, save_weights

    data = work / "textures"
    if not data.exists():
        write_sample("textures", data, seed=0, limit=60)
    torch.manual_seed(seed)
    spec = get_spec(model_name)
    model = create_model(model_name, num_classes=3, pretrained=pretrained and spec.weights.available)
    run = work / name
    run.mkdir()
    atomic_write_json(run / "config.json", {"model": model_name, "num_classes": 3, "layer": None, "strategy": "head",
                                            "preprocess": spec.preprocess_config().to_json()})
    atomic_write_json(run / "labels.json", sorted(p.name for p in (data / "train").iterdir()))
    save_weights(model, run / "model.safetensors")
    mark_complete(run)
    return run, data


def export_once(run: Path, data: Path, out: Path, cache: str) -> tuple[float, dict, str]:
    from zoo.export.onnx_export import export_run

    os.environ["ZOO_EXPORT_GRAPH_CACHE"] = cache
    t0 = time.perf_counter()
    report = export_run(run, out, data_dir=data, force=True)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256((out / "classifier.onnx").read_bytes() + (out / "features.onnx").read_bytes())
    return seconds, report, digest.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["ZOO_CACHE_DIR"] = str(work / "cache")  # starts empty, and the user's cache is left alone
        first, data = prepare(work, args.model, "first", seed=0, pretrained=True)
        export_once(first, data, work / "warm", "1")  # fills the cache
        run, _ = prepare(work, args.model, "second", seed=1, pretrained=False)
        times: dict[str, list[float]] = {"trace": [], "cache": []}
        digests, accuracies = set(), set()
        for i in range(args.repeats):
            for side, switch in (("trace", "0"), ("cache", "1")):
                seconds, report, digest = export_once(run, data, work / f"{side}{i}", switch)
                want = "traced" if side == "trace" else "reused from the export cache"
                assert report["trace"]["graph"] == want and report["parity"]["ok"], report["trace"]
                times[side].append(seconds)
                digests.add(digest)
                accuracies.add(report["val_accuracy"]["onnx_fp32"])
        trace, cache = statistics.median(times["trace"]), statistics.median(times["cache"])
        print(f"{args.model}, a second run with other weights, {args.repeats} exports each (median): fresh trace "
              f"{trace:.1f} s, graph from the export cache {cache:.1f} s: {cache / trace:.2f}x the time")
        print(f"identical classifier.onnx and features.onnx every time: {len(digests) == 1}; "
              f"val accuracy on ONNX Runtime: {sorted(accuracies)}")


if __name__ == "__main__":
    main()
