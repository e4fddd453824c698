"""Where the CPU time of training goes, side by side in one run: feature extraction, the training loop,
`full` end to end, and svm's C search.

- extraction images/s on the same images: zoo's extractor (what `head`, `svm` and the advisor run:
  ONNX Runtime when it measured faster, torch otherwise), raw ONNX Runtime on an exported
  features.onnx (the ceiling: no data loading beyond preprocessing, no caching), and torch eager;
- the CPU training step of `full` at 224 px: the plain eager loop against one thread, channels_last,
  bf16 autocast, both, and torch.compile (with its compile time against one epoch's saving);
- `full` through zoo.finetune on textures and digits500, each run in a fresh process: the new defaults
  (--image-size auto, channels-last, bf16 autocast on a CPU with bf16 instructions, freed tensors reused
  from the heap: zoo.cpu_memory) against the plain loop (224 px, fp32, contiguous, glibc's allocator
  defaults), images/s and val accuracy;
- svm's fit, the cross-validated C search plus the final fit, on 3,000 x 1,280 bottleneck features
  of handwritten digits (the size the issue measured at about 250 s).

    python benchmarks/training_speed.py [--images 400] [--svm-images 3000] [--parts extraction loop full svm]
        [--full-datasets textures digits500] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
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


def extraction(data: Path, limit: int, work: Path, rounds: int = 6) -> dict[str, tuple[float, float]]:
    """images/s (best round, median round) of three ways to compute bottleneck features of the same images."""
    from zoo.backbones import create_model
    from zoo.export.onnx_export import export_run
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
    run = work / "run"
    finetune(data, strategy="head", epochs=1, out=run, cache_dir=work / "run-cache")
    export_run(run, work / "export")
    session = open_session(work / "export" / "features.onnx")

    def zoo_extractor(round_: int) -> None:  # a cold cache each round: features computed and written
        cached_layer_features(model, records, cfg, model_name="efficientnet_lite0", layers=[None], view=None, seed=0,
                              cache=FeatureCache(work / f"zoo-cache-{round_}"), batch_size=32, workers=0,
                              description="zoo")

    def torch_eager(round_: int) -> None:
        os.environ[ort_features.ENGINE_ENV] = "torch"
        try:
            extract_features(model, ImageViews(records, cfg), [None], 32, 0, "torch eager")
        finally:
            os.environ.pop(ort_features.ENGINE_ENV)

    def raw_ort(round_: int) -> None:  # preprocess everything, then run the batches back to back
        by_shape: dict[tuple, list[np.ndarray]] = {}
        for r in records:
            a = preprocess(r.path, cfg)
            by_shape.setdefault(a.shape, []).append(a)
        for group in by_shape.values():
            for i in range(0, len(group), 32):
                session.run(["features"], {"image": np.stack(group[i:i + 32])})

    ways = list({"zoo extractor": zoo_extractor, "torch eager": torch_eager, "raw ONNX Runtime": raw_ort}.items())
    seconds: dict[str, list[float]] = {name: [] for name, _ in ways}
    # Interleaved rounds, each starting with the next way, so that load changes fall on all three. On
    # this 2-core VM, rounds of raw ONNX Runtime (whose workers spin) ranged from 42 to 92 images/s over 5 runs,
    # so the best round alone favours the way that varies most: the median is printed beside it.
    for round_ in range(rounds):
        for name, way in ways[round_ % len(ways):] + ways[:round_ % len(ways)]:
            tick = time.perf_counter()
            way(round_)
            seconds[name].append(time.perf_counter() - tick)
    for name, s in seconds.items():
        print(f"  {name} rounds, images/s: " + " ".join(f"{len(records) / x:.1f}" for x in s), flush=True)
    return {name: (len(records) / min(s), len(records) / statistics.median(s)) for name, s in seconds.items()}


def svm_fit_seconds(data: Path, n: int, work: Path) -> tuple[float, tuple[int, int]]:
    from zoo.backbones import create_model
    from zoo.training.feature_cache import FeatureCache, cached_layer_features
    from zoo.training.linear_probe import fit_linear_probe

    records, cfg = _records(data, n)
    model = create_model("efficientnet_lite0", num_classes=None, pretrained=True).eval()
    found, _, _ = cached_layer_features(model, records, cfg, model_name="efficientnet_lite0", layers=[None], view=None,
                                     seed=0, cache=FeatureCache(work / "svm-cache"), batch_size=32, workers=0,
                                     description="svm features")
    features, labels = found[None], torch.tensor([r.label for r in records])
    tick = time.perf_counter()
    fit_linear_probe([features], labels, seed=0)
    return time.perf_counter() - tick, tuple(features.shape)


def _full_model():
    from zoo.backbones import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def _steps(model, optimizer, batches, memory_format=torch.contiguous_format, bf16=False) -> float:
    """Seconds for one training step per batch (forward, loss, backward, AdamW), the plain loop's body."""
    loss_fn = torch.nn.CrossEntropyLoss()
    tick = time.perf_counter()
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x.contiguous(memory_format=memory_format)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - tick


def cpu_loop(data: Path, steps: int, batch: int, epoch_images: int) -> list[tuple[str, float, str]]:
    """Training images/s of `full` at 224 px on the CPU: the plain eager loop against each candidate
    change, on the same augmented batches held in memory (decoding is measured apart, by the finetune runs).
    Variants are measured in alternating rounds, and each keeps its best round, so drift in the machine's
    speed does not favour whichever ran first."""
    from zoo.training.augment import item_seed
    from zoo.training.datasets import ImageViews

    records, cfg = _records(data, steps * batch)
    views = ImageViews(records, cfg, [item_seed("speed", i) for i in range(len(records))])
    pairs = [views[i] for i in range(len(records))]
    batches = [(torch.stack([p[0] for p in pairs[i:i + batch]]), torch.tensor([p[1] for p in pairs[i:i + batch]]))
               for i in range(0, len(pairs), batch)]
    threads = torch.get_num_threads()
    models = {}

    def run(name: str) -> float:
        model, opt = models.setdefault(name, _full_model())
        layout = torch.channels_last if "channels_last" in name else torch.contiguous_format
        model.to(memory_format=layout)
        if name.startswith("1 thread"):
            torch.set_num_threads(1)
        try:
            return _steps(model, opt, batches, layout, bf16="bf16" in name)
        finally:
            torch.set_num_threads(threads)

    names = ["plain eager", f"1 thread (of {threads})", "channels_last", "bf16 autocast", "channels_last + bf16"]
    best = {n: float("inf") for n in names}
    for n in names:  # a warm-up step each: allocator and oneDNN kernel selection
        models.setdefault(n, _full_model())[0].to(
            memory_format=torch.channels_last if "channels_last" in n else torch.contiguous_format)
        _steps(*models[n], batches[:1], torch.channels_last if "channels_last" in n else torch.contiguous_format,
               bf16="bf16" in n)
    for _ in range(2):
        for n in names:
            best[n] = min(best[n], run(n))
    images = len(batches) * batch
    rows = [(n, images / best[n], "") for n in names]
    # torch.compile on top of the fastest eager variant, from a cold compile cache (what a user's first run
    # pays): kept only if its compile time pays for itself within one epoch of `epoch_images`.
    winner = min(names, key=best.__getitem__)
    layout = torch.channels_last if "channels_last" in winner else torch.contiguous_format
    model, opt = _full_model()
    model.to(memory_format=layout)
    tick = time.perf_counter()
    try:
        compiled = torch.compile(model)
        _steps(compiled, opt, batches[:1], layout, bf16="bf16" in winner)
        compile_s = time.perf_counter() - tick
        rate = images / min(_steps(compiled, opt, batches, layout, bf16="bf16" in winner) for _ in range(2))
        base = images / best[winner]
        saved = epoch_images / base - epoch_images / rate
        rows.append((f"torch.compile ({winner})", rate, f"compile {compile_s:.0f} s; saves {saved:.0f} s per "
                     f"{epoch_images}-image epoch: {'pays' if saved > compile_s else 'does not pay'} within one"))
    except Exception as e:  # noqa: BLE001 - a missing compiler or an unsupported op: report it, measure the rest
        rows.append(("torch.compile", float("nan"), f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"))
    return rows


def _one_full(data: Path, out: Path, epochs: int, size: str, cache: Path) -> float:
    """Seconds of one `full` run: the new defaults (size "auto") or the plain loop (224 px, fp32, contiguous,
    glibc's allocator defaults). full_runs runs each in a fresh process."""
    from unittest import mock

    from zoo.hardware import Compute
    from zoo.training.finetune import finetune

    tick = time.perf_counter()
    if size == "auto":
        finetune(data, strategy="full", epochs=epochs, out=out, cache_dir=cache)
    else:  # the loop before: 224 px, fp32, contiguous tensors (channels-last is not a flag, so patched), a
        # random new classifier, and glibc's own malloc settings (zoo.cpu_memory)
        os.environ["ZOO_CPU_ALLOCATOR"] = "system"
        with mock.patch.object(Compute, "channels_last", property(lambda self: False)):
            finetune(data, strategy="full", epochs=epochs, image_size=size, precision="fp32", warm_head=False,
                     out=out, cache_dir=cache)
    return time.perf_counter() - tick


PLAIN, NEW = ("plain loop, 224 px", "224"), ("new defaults", "auto")


def full_runs(datasets: dict[str, Path], work: Path, epochs: int, rounds: int = 1) -> list[dict]:
    """`full` through zoo.finetune: the new defaults (--image-size auto) against the plain loop at 224 px.

    With several rounds the order alternates (plain, new, new, plain, ...), so that a drift in this
    machine's speed falls on both; every round trains the same model from the same seed."""
    rows = []
    for name, data in datasets.items():
        for r in range(rounds):
            for label, size in (PLAIN, NEW) if r % 2 == 0 else (NEW, PLAIN):
                out = work / f"full-{name}-{size}-{r}"
                # A fresh process per run: glibc's allocator settings are process-wide, and each run starts
                # as a new `zoo finetune` does.
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    seconds = pool.apply(_one_full, (data, out, epochs, size, work / "full-cache"))
                config = json.loads((out / "config.json").read_text())
                metrics = json.loads((out / "metrics.json").read_text())
                images = sum(config["data"]["train_counts"].values()) * epochs
                rows.append({"dataset": name, "round": r, "run": label, "size": config["preprocess"]["input_size"],
                             "precision": config["compute"]["precision"],
                             "channels_last": config["compute"]["channels_last"], "warm_head": config["warm_head"],
                             "cpu_allocator": config["compute"].get("cpu_allocator", "system"),
                             "accuracy": metrics["accuracy"], "seconds": seconds, "images_per_s": images / seconds})
    return rows


def print_full(runs: list[dict], epochs: int) -> None:
    print(f"\nfull, {epochs} epochs through zoo.finetune (wall time includes decoding, BatchNorm recalibration "
          "and validation):")
    for r in runs:
        before = next(b for b in runs if b["dataset"] == r["dataset"] and b["round"] == r["round"]
                      and b["run"] == PLAIN[0])
        print(f"  {r['dataset']:<10} round {r['round']} {r['run']:<19} {r['size']:>3} px {r['precision']} "
              f"channels_last {r['channels_last']:<5} malloc {r['cpu_allocator']:<6} warm head {r['warm_head']:<5}  "
              f"val {100 * r['accuracy']:5.1f}%  "
              f"{r['seconds']:6.0f} s  {r['images_per_s']:6.1f} images/s  "
              f"{r['images_per_s'] / before['images_per_s']:5.2f}x  "
              f"({100 * (r['accuracy'] - before['accuracy']):+.1f} points)", flush=True)
    for name in dict.fromkeys(r["dataset"] for r in runs):
        seconds = {label: sum(r["seconds"] for r in runs if r["dataset"] == name and r["run"] == label)
                   for label, _ in (PLAIN, NEW)}
        rounds = len({r["round"] for r in runs if r["dataset"] == name})
        print(f"  {name:<10} all {rounds} round(s): new defaults {seconds[PLAIN[0]] / seconds[NEW[0]]:.2f}x the plain "
              f"loop ({seconds[NEW[0]]:.0f} s against {seconds[PLAIN[0]]:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="images for the extraction rates")
    ap.add_argument("--extraction-rounds", type=int, default=6, help="interleaved rounds of the extraction rates")
    ap.add_argument("--svm-images", type=int, default=3000)
    ap.add_argument("--loop-steps", type=int, default=4, help="batches of 32 per variant and round (CPU loop)")
    ap.add_argument("--full-epochs", type=int, default=8, help="epochs of the full runs (benchmarks/strategies.py's)")
    ap.add_argument("--full-datasets", nargs="+", default=["textures", "digits500"],
                    choices=["textures", "digits500"])
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the full runs, in alternating order")
    ap.add_argument("--parts", nargs="+", default=["extraction", "loop", "full", "svm"],
                    choices=["extraction", "loop", "full", "svm"])
    args = ap.parse_args()
    from zoo.data.samples import write_sample

    with tempfile.TemporaryDirectory(prefix="zoo-speed-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ZOO_CACHE_DIR", str(work / "home-cache"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")  # torch.compile starts cold, as for a user
        write_sample("textures", work / "textures")
        if "extraction" in args.parts:
            rates = extraction(work / "textures", args.images, work, args.extraction_rounds)
            best, median = rates["raw ONNX Runtime"]
            print(f"\nbottleneck extraction, efficientnet_lite0, same images, {args.extraction_rounds} rounds:")
            for name, (b, m) in rates.items():
                print(f"  {name:<17} best {b:5.1f} images/s {b / best:5.2f}x raw ONNX Runtime   "
                      f"median {m:5.1f} images/s {m / median:5.2f}x", flush=True)
        if "loop" in args.parts:
            rows = cpu_loop(work / "textures", args.loop_steps, 32, 330)
            print(f"\nfull training step on the CPU ({torch.get_num_threads()} threads), 224 px, batches of 32:")
            for name, rate, note in rows:
                print(f"  {name:<22} {rate:6.1f} images/s  {rate / rows[0][1]:5.2f}x plain eager  {note}", flush=True)
        if "full" in args.parts:
            write_sample("digits", work / "digits500", limit=500)
            datasets = {name: work / name for name in args.full_datasets}
            print_full(full_runs(datasets, work, args.full_epochs, args.rounds), args.full_epochs)
        if "svm" in args.parts:
            write_sample("digits", work / "digits")
            seconds, shape = svm_fit_seconds(work / "digits", args.svm_images, work)
            print(f"\nsvm fit (C by 5-fold grouped CV over 5 values, then the final fit) on {shape[0]} x {shape[1]} "
                  f"features: {seconds:.1f} s")


if __name__ == "__main__":
    main()
