"""The on-disk bottleneck-feature cache.

A frozen backbone maps an image to the same vector every time, so `head` computes each image's
features once (per augmentation view) and trains the classifier on them; later epochs and later
runs read them back. An entry's key hashes everything the vectors depend on: the images' content
(in order), the backbone and its exact weights, the layer, the view (inference, or augmented view k
with its seed and recipe version) and the preprocessing, so a change in any of them is a new key.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zoo.atomic import atomic_write
from zoo.backbones import ZooModel
from zoo.errors import ZooError
from zoo.hardware import Compute
from zoo.log import get_logger
from zoo.preprocess import PreprocessConfig
from zoo.progress import progress_bar
from zoo.training import distributed
from zoo.training.augment import AUGMENT_VERSION, item_seed
from zoo.training.datasets import ImageRecord, ImageViews, batch_shapes, loader, shape_batches
from zoo.training.ort_features import ORT, TORCH, Extractor, extractor, forced_engines
from zoo.training.strategies import Plan

log = get_logger(__name__)

T = TypeVar("T")
# An entry's record of the seconds its pass over the images took (decode and forward, not the one-off
# making of a feature graph): what auto's small-data pilot budget is a share of, from the cache or not.
PASS_SECONDS = "pass_seconds"
FEATURE_VERSION = 3  # bump when the way features (or their keys) are computed changes


def default_cache_dir() -> Path:
    if os.environ.get("ZOO_CACHE_DIR"):
        return Path(os.environ["ZOO_CACHE_DIR"]) / "features"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "zoo" / "features"


def tensors_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes: equal iff every tensor is bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(model: ZooModel, layer: str | None = None) -> str:
    """The weights and BatchNorm statistics that the features at `layer` depend on (None: the bottleneck,
    after pre_logits), never the new classifier. A model truncated at `layer` gives the same fingerprint
    as the whole model, so `auto`'s evidence and the `svm` strategy share cache entries."""
    return weights_fingerprints(model, [layer])[layer]


def weights_fingerprints(model: ZooModel, layers: Sequence[Layer]) -> dict[Layer, str]:
    """`weights_fingerprint` of several layers, each stage's tensors hashed once (the advisor asks for
    nine layers whose stages overlap)."""
    state = model.state_dict()
    parts = [f"stages.{n}." for n in model.stage_names] + ["pre_logits."]
    hashes = [tensors_fingerprint({k: v for k, v in state.items() if k.startswith(p)}) for p in parts]
    out = {}
    for layer in layers:
        upto = len(model.stage_names) + 1 if layer is None else model.stage_names.index(layer) + 1
        out[layer] = hashlib.sha256("".join(hashes[:upto]).encode()).hexdigest()
    return out


def dataset_fingerprint(records: Sequence[ImageRecord]) -> str:
    """Content hash of the images in order; paths and labels do not change features, so they are left out."""
    return hashlib.sha256("\n".join(r.sha256 for r in records).encode()).hexdigest()


def training_views(views: int | None) -> list[int | None]:
    """The views of each training image that the feature-level classifiers learn from: with `views`,
    the inference view (None: what serving computes) and views - 1 augmented ones; else the inference
    view alone. The inference view comes first: cross-validation scores held-out images on it, since it
    is the view they are classified in once deployed. Scored on augmented views instead, a linear probe
    on faces' stage5 (efficientnet_lite0, seed-2 split) cross-validated at 99.6% and then scored 91.2% on
    val, while its held-out images in the inference view scored 81-83%: early stages' pooled
    activations depend on the framing, and square crops frame an image differently from the whole."""
    return [None, *range(views - 1)] if views else [None]


def view_name(view: int | None, seed: int) -> str:
    return "inference" if view is None else f"augment-v{AUGMENT_VERSION}-seed{seed}-view{view}"


@dataclass(frozen=True)
class FeatureCache:
    root: Path

    def key(self, *, dataset: str, model: str, weights: str, layer: str | None, view: str,
            preprocess: PreprocessConfig, engine: str = "torch") -> str:
        """`engine` (torch or onnxruntime) is part of the key: features of the two never mix."""
        parts = {"dataset": dataset, "model": model, "weights": weights, "layer": layer, "view": view,
                 "preprocess": preprocess.to_json(), "version": FEATURE_VERSION, "engine": engine}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, rows: int) -> Entry | None:
        """The entry, or None (recompute) when it is absent, unreadable, or its data fails its checksum."""
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
        except (FileNotFoundError, SafetensorError, KeyError, OSError):
            return None  # absent or damaged: recompute
        recorded = meta.get("sha256")
        if recorded is None:
            return None  # written before entries carried a checksum: recomputed quietly, and stored with one
        if recorded != tensors_fingerprint({"features": features}):  # an intact header over damaged data
            log.warning(f"feature cache entry {path.name} failed its checksum; recomputing it")
            return None
        return Entry(features, _seconds(meta.get(PASS_SECONDS))) if features.shape[0] == rows else None

    def save(self, key: str, features: torch.Tensor, meta: dict[str, Any]) -> None:
        metadata = {k: str(v) for k, v in meta.items()}
        metadata["sha256"] = tensors_fingerprint({"features": features})  # verified by every load
        try:
            atomic_write(self.path(key), lambda tmp: save_file({"features": features.contiguous()}, str(tmp),
                                                               metadata=metadata))
        except ZooError as e:  # a cache is an optimisation: a full or read-only cache folder must not stop training
            log.warning(f"the feature cache could not store an entry ({e}); training goes on without it")


Layer = str | None  # a stage name, or None for the bottleneck


class Entry(NamedTuple):
    features: torch.Tensor
    pass_seconds: float | None  # what its pass cost when it was computed (PASS_SECONDS); None: it does not say


def _seconds(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def pooled_activations(model: ZooModel, x: torch.Tensor, layers: Sequence[Layer]) -> dict[Layer, torch.Tensor]:
    """Globally pooled activations at every requested stage (None: the bottleneck), from one forward pass
    that stops at the deepest one."""
    names = model.stage_names
    deepest = len(names) - 1 if None in layers else max(names.index(layer) for layer in layers if layer is not None)
    out: dict[Layer, torch.Tensor] = {}
    for name in names[: deepest + 1]:
        x = model.stages[name](x)
        if name in layers:
            out[name] = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
    if None in layers:  # exactly forward_features: pre_logits on the pooled last stage
        out[None] = model.pre_logits(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
    return out


# ONNX Runtime runs best back to back: decoding between every two runs held zoo's extractor to 0.52x raw
# ONNX Runtime on 2 cores, against 0.82-0.86x in chunks (benchmarks/training_speed.py). So about this many
# images are decoded, then run (80-160 MB at 224 px).
ORT_CHUNK_IMAGES = 128


def _decoded_ahead(decoded: Iterator[tuple[T, list[int]]], images: int) -> Iterator[tuple[T, list[int]]]:
    """The same (batch, indices) items, each chunk of about `images` images decoded before the first is used."""
    chunk: list[tuple[T, list[int]]] = []
    held = 0
    for item in decoded:
        chunk.append(item)
        held += len(item[1])
        if held >= images:
            yield from chunk
            chunk, held = [], 0
    yield from chunk


@torch.no_grad()
def extract_features(model: ZooModel, dataset: ImageViews, layers: Sequence[Layer], batch_size: int, workers: int,
                     description: str, ort: Extractor | None = None) -> dict[Layer, torch.Tensor]:
    """Pooled activations of every item at every layer, in dataset order: one forward pass per batch, on
    ONNX Runtime when `ort` is given, else on torch."""
    was_training = model.training
    model.eval()
    # Several processes: each runs every world_size-th batch (the same batches one process runs), then all gather.
    batches = distributed.my_batches(shape_batches(range(len(dataset)), dataset.shapes(), batch_size))
    chunks: dict[Layer, list[tuple[list[int], torch.Tensor]]] = {layer: [] for layer in layers}
    # On the model's device, in fp32 whatever the training precision: cached features are reused by
    # later runs, which must find the same numbers. Off the GPU, in the layout the images come in
    # (shaped_pass picks one on a GPU).
    device = next(model.parameters()).device
    compute = Compute(device, "fp32", "" if device.type == "cuda" else "contiguous")
    bar = progress_bar(loader(dataset, batches, workers, compute.pin_memory), description, total=len(batches))
    decoded = zip(bar, batches, strict=True)  # the bar first, so it sees its last item finish
    with compute.shaped_pass(model, batch_shapes(dataset, batches) if ort is None else []) as shaped:
        for (x, _), idx in (_decoded_ahead(decoded, ORT_CHUNK_IMAGES) if ort is not None else decoded):
            found = ort(x, list(layers)) if ort is not None else pooled_activations(model, shaped.batch(x), layers)
            for layer, f in found.items():
                chunks[layer].append((idx, f.float().cpu()))
    model.train(was_training)
    out = {}
    for layer, parts in chunks.items():
        parts = distributed.gather_chunks(parts)
        out[layer] = torch.empty(len(dataset), parts[0][1].shape[1] if parts else 0)
        for idx, f in parts:
            out[layer][idx] = f
    return out


def cached_layer_features(model: ZooModel, records: Sequence[ImageRecord], cfg: PreprocessConfig, *,
                          model_name: str, layers: Sequence[Layer], view: int | None, seed: int,
                          cache: FeatureCache | None, batch_size: int, workers: int,
                          description: str) -> tuple[dict[Layer, torch.Tensor], int, float | None]:
    """Features of one view of `records` at every layer, how many layers came from the cache, and the
    seconds a pass computing them costs: timed when it ran, else as the cache entries record (None when
    an entry does not say). Read back, the deepest layer's pass is the cost of all.

    The layers the cache lacks are computed together, in one pass of the backbone.
    """
    name = view_name(view, seed)
    data_key = dataset_fingerprint(records)
    prints = weights_fingerprints(model, layers) if cache else {}

    def keys_for(engine: str) -> dict[Layer, str]:
        return {layer: cache.key(dataset=data_key, model=model_name, weights=prints[layer], layer=layer, view=name,
                                 preprocess=cfg, engine=engine) if cache else ""
                for layer in layers}

    def load(keys: dict[Layer, str]) -> dict[Layer, Entry]:
        if cache is None:
            return {}
        loaded = distributed.from_main(lambda: {layer: cache.load(keys[layer], len(records)) for layer in layers})
        return {layer: e for layer, e in loaded.items() if e is not None}  # rank 0's cache speaks for the run

    def recorded(entries: dict[Layer, Entry]) -> float | None:
        costs = [e.pass_seconds for e in entries.values()]
        return None if not costs or None in costs else max(c for c in costs if c is not None)

    # Entries that one engine made for every layer asked are used as they are, whichever engine it was
    # (auto's evidence pass made them); otherwise the engine is chosen, and only its entries are read.
    for engine in forced_engines():
        entries = load(keys_for(engine))
        if len(entries) == len(layers):
            return {layer: entries[layer].features for layer in layers}, len(layers), recorded(entries)
    deepest = None if None in layers else max((x for x in layers if x is not None), key=model.stage_names.index)
    ort = extractor(model, model_name, deepest if deepest is None else model.stage_names[-1], cfg.input_size)
    engine = ORT if ort is not None else TORCH
    keys = keys_for(engine)
    entries = load(keys)
    found = {layer: e.features for layer, e in entries.items()}
    missing = [layer for layer in layers if layer not in found]
    seconds = recorded(entries) if entries else 0.0
    if missing:
        seeds = None if view is None else [item_seed(seed, "view", view, r.sha256) for r in records]
        tick = time.perf_counter()
        computed = extract_features(model, ImageViews(records, cfg, seeds), missing, batch_size, workers, description,
                                    ort)
        took = time.perf_counter() - tick
        if cache is not None and distributed.world().is_main:
            for layer, features in computed.items():
                cache.save(keys[layer], features, {"model": model_name, "layer": layer, "view": name,
                                                   "images": len(records), "engine": engine, PASS_SECONDS: took})
        found.update(computed)
        seconds = None if seconds is None else max(seconds, took)
    return {layer: found[layer] for layer in layers}, len(layers) - len(missing), seconds


def cached_features(model: ZooModel, records: Sequence[ImageRecord], cfg: PreprocessConfig, *, model_name: str,
                    layer: Layer, view: int | None, seed: int, cache: FeatureCache | None, batch_size: int,
                    workers: int, description: str) -> tuple[torch.Tensor, bool]:
    """(features, True when read from the cache) for one view of `records` at one layer."""
    features, hits, _ = cached_layer_features(model, records, cfg, model_name=model_name, layers=[layer],
                                              view=view, seed=seed, cache=cache, batch_size=batch_size,
                                              workers=workers, description=description)
    return features[layer], hits == 1


def bottleneck_views(plan: Plan, model_name: str, train: Sequence[ImageRecord], val: Sequence[ImageRecord],
                     cfg: PreprocessConfig, *, views: int | None, seed: int, cache_dir: Path | None, use_cache: bool,
                     batch_size: int, workers: int) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, Any]]:
    """Features of every training view (`training_views(views)`) and of the validation images, from the
    cache when possible; and a report of what came from where."""
    tick = time.time()
    cache = FeatureCache(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
    common: dict[str, Any] = dict(model_name=model_name, layer=plan.layer, seed=seed, cache=cache,
                                  batch_size=batch_size, workers=workers)
    train_views = training_views(views)
    train_feats, hits = [], 0
    for i, v in enumerate(train_views):
        what = "train features" + (f", view {i + 1}/{len(train_views)}" if len(train_views) > 1 else "")
        feats, hit = cached_features(plan.model, train, cfg, view=v, description=what, **common)
        train_feats.append(feats)
        hits += hit
    val_feats, hit = cached_features(plan.model, val, cfg, view=None, description="val features", **common)
    hits += hit
    report = {"dir": str(cache.root) if cache else None, "entries": len(train_views) + 1, "from_cache": hits,
              "computed": len(train_views) + 1 - hits, "seconds": time.time() - tick}
    log.info(f"bottleneck features: {report['from_cache']} of {report['entries']} sets from the cache, "
             f"{report['computed']} computed ({report['seconds']:.1f} s)")
    return train_feats, val_feats, report
