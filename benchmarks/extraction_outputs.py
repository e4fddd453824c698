"""Bottleneck extraction through the whole feature graph (every stage's pooled output) vs the same graph
pruned to the bottleneck, side by side.

ONNX Runtime runs every node of a graph whatever outputs a run asks for. The feature graph that
zoo/training/ort_features.py makes for a backbone has one pooled output per stage (the advisor wants
them all), and `head` and `svm` ask for the bottleneck alone: the pooled outputs of the early stages
average the largest activation maps for nothing. The extractor now runs such a run on the graph
pruned to the outputs it asks for. Both sessions (same options as zoo's) run the same decoded
batches of the textures sample (330 crops of many sizes, batches grouped by shape as zoo groups them),
in interleaved rounds that alternate which goes first; images/s per round, then the median.

    python -u benchmarks/extraction_outputs.py [--rounds 12]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.utils


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    from zoo.backbones import create_model, get_spec
    from zoo.data.folder import load_image_folder
    from zoo.data.samples import write_sample
    from zoo.preprocess import preprocess
    from zoo.training import ort_features
    from zoo.training.datasets import shape_batches

    with tempfile.TemporaryDirectory(prefix="zoo-outputs-") as tmp:
        work = Path(tmp)
        os.environ["ZOO_CACHE_DIR"] = str(work / "cache")
        write_sample("textures", work / "textures")
        cfg = get_spec("efficientnet_lite0").preprocess_config()
        images = [preprocess(s.path, cfg) for s in load_image_folder(work / "textures").train]
        batches = [np.stack([images[i] for i in b])
                   for b in shape_batches(range(len(images)), [a.shape for a in images], 32)]
        model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
        ext = ort_features.extractor(model, "efficientnet_lite0", None, cfg.input_size)
        assert ext is not None and ext.graph is not None, "ONNX Runtime is not the feature engine here"
        whole = onnx.load_from_string(ext.graph)
        pruned = onnx.utils.Extractor(whole).extract_model(["image"], ["bottleneck"])
        sessions = {f"whole graph ({len(whole.graph.output)} outputs, {len(whole.graph.node)} nodes)": ext.session,
                    f"pruned to the bottleneck ({len(pruned.graph.node)} nodes)":
                        ort_features._session(pruned.SerializeToString())}
        rates: dict[str, list[float]] = {name: [] for name in sessions}
        for r in range(args.rounds):
            for name, session in (list(sessions.items()) if r % 2 == 0 else list(sessions.items())[::-1]):
                tick = time.perf_counter()
                for b in batches:
                    session.run(["bottleneck"], {"image": b})
                rates[name].append(len(images) / (time.perf_counter() - tick))
        base = statistics.median(next(iter(rates.values())))
        print(f"\n{len(images)} images in {len(batches)} batches, {args.rounds} interleaved rounds, images/s:")
        for name, rs in rates.items():
            print(f"  {name:<44} median {statistics.median(rs):5.1f}  {statistics.median(rs) / base:4.2f}x   rounds "
                  + " ".join(f"{x:.0f}" for x in rs))
        wins = sum(p > w for w, p in zip(*rates.values(), strict=True))
        print(f"  pruned faster in {wins} of {args.rounds} rounds")


if __name__ == "__main__":
    main()
