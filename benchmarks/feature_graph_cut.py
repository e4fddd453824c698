"""A stage's feature graph after the advisor: cut from the whole backbone's graph vs traced, side by side.

`zoo advise` (and `auto`) extracts every stage and the bottleneck through one ONNX Runtime graph of
the whole frozen backbone. `svm` on the stage it picks then needs the backbone cut after that stage.
That graph is either traced by torch.onnx.export on its own, or pruned from the whole graph made for
the same weights (zoo/training/ort_features.py). Each round makes the stage graph both ways in fresh
cache folders (the whole graph is made first, untimed, where the cut is measured), alternating which
goes first so that background load falls on both; the time includes the parity check and the timing
of both engines that every new graph gets. The features of the two graphs are compared too.

    python benchmarks/feature_graph_cut.py [--model efficientnet_lite0] [--stage stage5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def make(cache: Path, model_name: str, stage: str, whole_first: bool) -> tuple[float, str, object]:
    """Seconds to make the stage graph in `cache` (after an untimed whole graph when asked), how, and the extractor."""
    from zoo.backbones import create_model, get_spec
    from zoo.training import ort_features

    os.environ["ZOO_CACHE_DIR"] = str(cache)
    ort_features._LOADED.clear()
    size = get_spec(model_name).preprocess_config().input_size
    model = create_model(model_name, num_classes=None, pretrained=True).eval()
    if whole_first:
        ort_features.extractor(model, model_name, None, size)
    tick = time.perf_counter()
    ext = ort_features.extractor(model.truncated(stage), model_name, stage, size)
    seconds = time.perf_counter() - tick
    assert ext is not None, "ONNX Runtime was not used: see the log"
    return seconds, ext.report["made"], ext


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--stage", default="stage5")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ["ZOO_FEATURE_ENGINE"] = "onnxruntime"  # the graph is made and used whichever engine is faster
    import torch

    times: dict[str, list[float]] = {"traced": [], "cut": []}
    worst = 0.0
    x = torch.randn(4, 3, 131, 97, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["cut", "traced"] if r % 2 == 0 else ["traced", "cut"]
            found = {}
            for how in order:
                seconds, made, ext = make(Path(tmp) / f"{how}{r}", args.model, args.stage, how == "cut")
                assert (made == "traced") == (how == "traced"), made
                times[how].append(seconds)
                found[how] = ext(x, [args.stage])[args.stage]
            worst = max(worst, float((found["cut"] - found["traced"]).abs().max()))
            print(f"round {r}: traced {times['traced'][-1]:.1f} s, cut {times['cut'][-1]:.1f} s", flush=True)
    traced, cut = statistics.median(times["traced"]), statistics.median(times["cut"])
    print(f"{args.model} up to {args.stage}, median of {args.rounds} (parity check and engine timing included):")
    print(f"  traced on its own            {traced:6.1f} s   1.00x")
    print(f"  cut from the whole graph     {cut:6.1f} s   {cut / traced:.2f}x")
    print(f"  max |difference| between the two graphs' features: {worst:.1e}")


if __name__ == "__main__":
    main()
