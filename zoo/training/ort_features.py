"""Pooled features of the frozen backbone on ONNX Runtime, for `head`, `svm` and the advisor's evidence.

On the CPU, ONNX Runtime runs the same forward pass in about half of torch eager's time. The frozen
backbone, cut after the deepest layer a run needs, is exported once per (backbone, weights, deepest
layer) with one pooled output per stage up to it, and kept in the cache folder beside the features.
A graph cut at a stage is taken from the whole backbone's graph when one was made for the same
weights up to that stage (the advisor makes it; `svm` on the stage it picked then needs no trace of
its own): the same nodes, pruned by onnx.utils.Extractor, and checked like a traced one.
When the graph is made, its outputs are checked against torch on two input sizes (parity) and both
engines are timed on one batch; the faster one that agrees is used from then on, and the log says
which and why. Torch remains the engine on a GPU, under several processes, and whenever ONNX Runtime
disagrees or is slower. The feature cache's keys name the engine, so entries of the two never mix.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.atomic import atomic_write_bytes, atomic_write_json
from zoo.backbones import ZooModel
from zoo.log import get_logger
from zoo.training import distributed

log = get_logger(__name__)

Layer = str | None  # a stage name, or None for the bottleneck
TORCH, ORT = "torch", "onnxruntime"
ENGINE_ENV = "ZOO_FEATURE_ENGINE"  # auto (default), torch or onnxruntime: forces an engine (tests, benchmarks)
GRAPH_VERSION = 1
PARITY_SIZES = ((224, 224), (97, 131))  # the input size and an odd one (TF-SAME padding stays dynamic)
PARITY_TOLERANCE = 1e-4  # max |difference| relative to max(1, max |feature|), per output
TIMING_RUNS = 3


def _wanted() -> str:
    return os.environ.get(ENGINE_ENV, "auto").strip().lower()


def forced_engines() -> tuple[str, ...]:
    """The engines whose cached features a run may read: the one ZOO_FEATURE_ENGINE forces, else both."""
    wanted = _wanted()
    return (wanted,) if wanted in (TORCH, ORT) else (ORT, TORCH)


def pooled_names(model: ZooModel, deepest: Layer) -> list[Layer]:
    """Every layer the graph cut at `deepest` outputs: the stages up to it, and the bottleneck for None."""
    names = model.stage_names
    if deepest is None:
        return [*names, None]
    return list(names[: names.index(deepest) + 1])


def output_name(layer: Layer) -> str:
    return "bottleneck" if layer is None else f"pooled_{layer}"


class _Pooled(nn.Module):
    def __init__(self, model: ZooModel, layers: list[Layer]):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from zoo.training.feature_cache import pooled_activations

        found = pooled_activations(self.model, image, self.layers)
        return tuple(found[layer] for layer in self.layers)


def _without_hooks(model: ZooModel) -> ZooModel:
    """A copy for exporting and checking: the caller's forward hooks (the advisor's BatchNorm statistics)
    must neither be traced into the graph nor count the random check inputs."""
    clean = copy.deepcopy(model).eval()
    for m in clean.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return clean


def _export(model: ZooModel, layers: list[Layer]) -> bytes:
    """The frozen backbone up to the deepest layer, one pooled output per layer, dynamic batch/height/width."""
    batch = torch.export.Dim("batch")
    height, width = torch.export.Dim("height", min=32), torch.export.Dim("width", min=32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Pooled(model, layers).eval(), (torch.zeros(2, 3, 64, 96),), None, dynamo=True, verbose=False,
            input_names=["image"], output_names=[output_name(x) for x in layers],
            dynamic_shapes={"image": {0: batch, 2: height, 3: width}}, optimize=True)
    assert program is not None
    return program.model_proto.SerializeToString()


@dataclass
class Extractor:
    """An ONNX Runtime session that returns pooled features at `layers`."""

    session: Any
    layers: list[Layer]
    report: dict[str, Any]  # parity and timings, measured when the graph was made
    graph: bytes | None = None  # the graph itself, to prune for runs that want fewer outputs
    _pruned: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def __call__(self, x: torch.Tensor, wanted: list[Layer]) -> dict[Layer, torch.Tensor]:
        names = tuple(output_name(w) for w in wanted)
        outputs = self._session_for(names).run(list(names), {"image": x.numpy()})
        return {w: torch.from_numpy(o) for w, o in zip(wanted, outputs, strict=True)}

    def _session_for(self, names: tuple[str, ...]) -> Any:
        """A session that computes only `names`: ONNX Runtime runs every node of a graph whatever outputs
        a run asks for, and the pooled outputs of the early stages average the largest activation maps
        (pruned to the bottleneck, lite0 extracted the textures sample 5% faster: benchmarks/extraction_outputs.py).
        The pruned graph holds a subset of the checked graph's nodes, unchanged, so its parity holds."""
        if self.graph is None or set(names) == {output_name(x) for x in self.layers}:
            return self.session
        if names not in self._pruned:
            import onnx

            self._pruned[names] = _session(_pruned(onnx.load_from_string(self.graph), list(names)))
        return self._pruned[names]


def _pruned(whole: Any, outputs: list[str]) -> bytes:
    """The graph `whole` (an onnx.ModelProto) with only the nodes that `outputs` need, serialized."""
    import onnx.utils  # imported where needed: onnx costs every process ~1 s at start

    return onnx.utils.Extractor(whole).extract_model(["image"], outputs).SerializeToString()


def graph_folder() -> Path:
    """Beside the default feature cache, whatever --cache-dir says: a graph depends on the backbone and
    its weights only, so one made for any dataset serves every other."""
    from zoo.training.feature_cache import default_cache_dir

    return default_cache_dir().parent / "graphs"


def _cuts(model: ZooModel) -> dict[str, str]:
    """What a whole-backbone graph's report records so that stage graphs can be cut from it: each stage's
    weights fingerprint (the weights its pooled output depends on)."""
    from zoo.training.feature_cache import weights_fingerprints

    return {str(k): v for k, v in weights_fingerprints(model, model.stage_names).items()}


def _cut_from_whole(folder: Path, model_name: str, model: ZooModel, deepest: Layer) -> bytes | None:
    """The graph up to `deepest`, pruned from a whole-backbone graph made for the same weights up to it;
    None when there is none (or it cannot be read)."""
    import onnx

    from zoo.training.feature_cache import weights_fingerprint

    if deepest is None:
        return None
    wanted = weights_fingerprint(model, deepest)
    for report_path in sorted(folder.glob("*.json")):
        try:
            report = json.loads(report_path.read_text())
            if (report.get("model") != model_name or report.get("deepest") is not None
                    or report.get("torch") != torch.__version__ or report.get("cuts", {}).get(deepest) != wanted):
                continue
            whole = onnx.load(str(report_path.with_suffix(".onnx")))
            return _pruned(whole, [output_name(x) for x in pooled_names(model, deepest)])
        except Exception as e:  # noqa: BLE001 - an unreadable entry: trace instead
            log.warning(f"could not cut a graph from {report_path.with_suffix('.onnx')} ({type(e).__name__}: {e})")
    return None


def _graph_key(model_name: str, model: ZooModel, deepest: Layer) -> str:
    from zoo.training.feature_cache import weights_fingerprint

    parts = {"model": model_name, "weights": weights_fingerprint(model, deepest), "deepest": deepest,
             "version": GRAPH_VERSION, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _check(model: ZooModel, session: Any, layers: list[Layer], input_size: int) -> dict[str, Any]:
    """Parity against torch on two sizes, and both engines timed on one batch at the input size."""
    from zoo.training.feature_cache import pooled_activations

    generator = torch.Generator().manual_seed(0)
    worst, cases = 0.0, []
    timings: dict[str, list[float]] = {TORCH: [], ORT: []}
    for h, w in ((input_size, input_size), PARITY_SIZES[1]):
        x = torch.randn(4, 3, h, w, generator=generator)
        with torch.no_grad():
            want = pooled_activations(model, x, layers)
        got = session.run([output_name(x) for x in layers], {"image": x.numpy()})
        for layer, g in zip(layers, got, strict=True):
            ref = want[layer].numpy()
            error = float(np.abs(g - ref).max()) / max(1.0, float(np.abs(ref).max()))
            worst = max(worst, error)
        cases.append([h, w])
    x = torch.randn(8, 3, input_size, input_size, generator=generator)
    names = [output_name(x) for x in layers]
    for _ in range(TIMING_RUNS):  # interleaved, so a change in load falls on both
        t = time.perf_counter()
        with torch.no_grad():
            pooled_activations(model, x, layers)
        timings[TORCH].append(time.perf_counter() - t)
        t = time.perf_counter()
        session.run(names, {"image": x.numpy()})
        timings[ORT].append(time.perf_counter() - t)
    ms = {k: round(1000 * statistics.median(v), 1) for k, v in timings.items()}
    agrees = worst <= PARITY_TOLERANCE
    engine = ORT if agrees and ms[ORT] < ms[TORCH] else TORCH
    return {"parity": {"max_relative_error": worst, "tolerance": PARITY_TOLERANCE, "sizes": cases, "ok": agrees},
            "ms_per_batch_of_8": ms, "engine": engine}


def _session(graph: bytes) -> Any:
    import onnxruntime as ort

    from zoo.inference import CPU, open_session

    options = ort.SessionOptions()
    # Idle ONNX Runtime workers spin by default, taking the cores from the torch work between runs
    # (decoding, torch.stack of the next batch, the advisor's probes): see benchmarks/training_speed.py.
    options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("ZOO_ORT_SPIN", "0"))
    return open_session(graph, [CPU], options=options)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


_LOADED: dict[str, Extractor | None] = {}  # per process: a graph is checked once, then reused by every view


def _open_or_make(model: ZooModel, model_name: str, deepest: Layer, input_size: int, stem: Path) -> Extractor:
    """The graph at `stem`.onnx with its report, made (cut or traced, then checked) when it is not there."""
    path, report_path = stem.with_suffix(".onnx"), stem.with_suffix(".json")
    layers = pooled_names(model, deepest)
    if path.is_file() and report_path.is_file():
        try:
            stored = path.read_bytes()
            return Extractor(_session(stored), layers, json.loads(report_path.read_text()), stored)
        except Exception as e:  # noqa: BLE001 - a damaged entry is made again, not worked around on every run
            log.warning(f"the feature graph {path} cannot be read ({type(e).__name__}: {e}): making it again")
    tick = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = _without_hooks(model)
    cut = _cut_from_whole(path.parent, model_name, clean, deepest)
    made = "cut from the whole backbone's graph" if cut is not None else "traced"
    graph = cut if cut is not None else _export(clean, layers)
    atomic_write_bytes(path, graph)
    session = _session(graph)
    report = {**_check(clean, session, layers, input_size), "model": model_name, "deepest": deepest, "made": made,
              "export_seconds": round(time.perf_counter() - tick, 1), "torch": torch.__version__}
    if deepest is None:
        report["cuts"] = _cuts(clean)
    atomic_write_json(report_path, report)
    p, ms = report["parity"], report["ms_per_batch_of_8"]
    log.info(f"feature graph for {model_name} up to {deepest or 'the bottleneck'} ({made}): ONNX Runtime "
             f"{'agrees' if p['ok'] else 'DISAGREES'} with torch (max relative error "
             f"{p['max_relative_error']:.1e}, tolerance {p['tolerance']:.0e}, sizes {p['sizes']}); "
             f"{ms[ORT]:.0f} ms against torch's {ms[TORCH]:.0f} ms per batch of 8: "
             f"features run on {report['engine']}")
    return Extractor(session, layers, report, graph)


def extractor(model: ZooModel, model_name: str, deepest: Layer, input_size: int) -> Extractor | None:
    """The ONNX Runtime extractor for this backbone cut at `deepest`, or None when torch is to run.

    The graph and its check are cached on disk; the first call in a process loads or makes them. Asked
    for with ZOO_FEATURE_ENGINE=onnxruntime, ONNX Runtime runs even when it measured slower (never
    when it disagrees with torch); with torch, it never runs."""
    wanted = _wanted()
    if wanted == TORCH or _device(model).type != "cpu" or distributed.world().distributed:
        return None
    key = _graph_key(model_name, model, deepest)
    if key in _LOADED:
        return _LOADED[key]
    try:
        ext = _open_or_make(model, model_name, deepest, input_size, graph_folder() / key)
    except Exception as e:  # noqa: BLE001 - any export or runtime failure: torch extracts instead
        log.warning(f"feature graph for {model_name}: ONNX Runtime unavailable ({type(e).__name__}: {e}); "
                    "features run on torch")
        ext = None
    if ext is not None and wanted != ORT and ext.report.get("engine") != ORT:
        ext = None
    if ext is not None and wanted == ORT and not ext.report["parity"]["ok"]:
        ext = None  # never features that disagree with torch, even when asked
    _LOADED[key] = ext
    return ext
