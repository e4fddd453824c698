"""Which backbone for this data: the advisor's held-out probe score beside the measured serving latency.

Every backbone is scored the way `auto` scores strategies (the best frozen-feature candidate,
cross-validated on the training split, no pilots), and its classifier graph is exported to ONNX and
timed with ONNX Runtime at its own input size, batch 1 and 8, on this machine. The Pareto front
holds the backbones no other beats on both; `zoo finetune --model auto --max-latency-ms X` takes the
most accurate one within the latency budget.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from zoo.advisor.recommend import AdviseSettings, advise
from zoo.backbones import create_model, get_spec, list_specs
from zoo.errors import UsageError, ZooError
from zoo.log import get_logger

log = get_logger(__name__)
LATENCY_BATCHES = (1, 8)
LATENCY_RUNS = {1: 40, 8: 10}  # runs per batch size; the median is kept


@dataclass(frozen=True)
class BackboneScore:
    model: str
    score: float  # the best candidate's held-out accuracy on the training split
    std: float
    best: str  # which candidate: "head" or "svm on stage6"
    input_size: int
    latency_ms: dict[int, float]  # median ONNX Runtime latency per batch size
    provider: str
    head_score: float | None = None  # the head candidate's held-out accuracy (the bottleneck's linear classifier)
    pareto: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def available_backbones() -> list[str]:
    """The backbones whose pretrained weights are on this machine."""
    return [s.name for s in list_specs() if s.weights.available and not s.notes]


def parse_models(text: str) -> list[str]:
    """`available`, or comma-separated names (each checked against the registry)."""
    names = available_backbones() if text.strip() == "available" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        get_spec(name)  # one sentence for an unknown name
    if not names:
        raise UsageError("No backbone to rank: give --models NAME,NAME or --models available.")
    return names


def onnx_latency_ms(model_names: list[str]) -> dict[str, tuple[dict[int, float], str]]:
    """Median latency of each backbone's classifier graph per batch size, and the provider that ran it.

    The backbones are timed in interleaved rounds (A B C, A B C, ...), so that a change in the machine's
    load during the measurement falls on all of them alike instead of on whichever ran then."""
    from zoo.export.onnx_export import classifier_graph
    from zoo.inference import open_session

    with tempfile.TemporaryDirectory() as tmp:
        sessions, inputs = {}, {}
        for name in model_names:
            spec = get_spec(name)
            graph = classifier_graph(create_model(name, num_classes=10, pretrained=False))
            path = Path(tmp) / f"{name}.onnx"
            path.write_bytes(graph.SerializeToString())
            sessions[name] = open_session(path)
            size = spec.pretrained_cfg.input_size
            inputs[name] = {b: np.random.default_rng(0).standard_normal((b, 3, size, size)).astype(np.float32)
                            for b in LATENCY_BATCHES}
        times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in LATENCY_BATCHES} for n in model_names}
        for batch in LATENCY_BATCHES:
            for name in model_names:  # warm-up
                sessions[name].run(None, {"image": inputs[name][batch]})
            for _ in range(LATENCY_RUNS[batch]):
                for name in model_names:
                    t = time.perf_counter()
                    sessions[name].run(None, {"image": inputs[name][batch]})
                    times[name][batch].append(1000 * (time.perf_counter() - t))
        return {n: ({b: round(statistics.median(t), 2) for b, t in per.items()}, sessions[n].get_providers()[0])
                for n, per in times.items()}


def _mark_pareto(scores: list[BackboneScore]) -> list[BackboneScore]:
    """Pareto: no other backbone is at least as accurate and at least as fast (batch 1), and better in one."""
    def dominated(a: BackboneScore) -> bool:
        return any(b.score >= a.score and b.latency_ms[1] <= a.latency_ms[1]
                   and (b.score > a.score or b.latency_ms[1] < a.latency_ms[1]) for b in scores if b is not a)

    return [replace(s, pareto=not dominated(s)) for s in scores]


def rank_backbones(data_dir: Path | str, models: list[str],
                   settings: AdviseSettings | None = None) -> list[BackboneScore]:
    """Every backbone's probe score and latency, most accurate first, the Pareto front marked."""
    s = replace(settings or AdviseSettings(), budget_minutes=0.0)  # the cheap candidates only: comparable, fast
    advice = {}
    for name in models:
        log.info(f"ranking backbones: {name}")
        advice[name] = advise(data_dir, model=name, settings=s)
    log.info("ranking backbones: ONNX Runtime latency")
    latency = onnx_latency_ms(models)
    scores = []
    for name in models:
        best = advice[name].candidates[0]
        scores.append(BackboneScore(name, best["accuracy"], best["std"],
                                    best["strategy"] + (f" on {best['layer']}" if best["layer"] else ""),
                                    get_spec(name).pretrained_cfg.input_size, latency[name][0], latency[name][1],
                                    head_score=next((c["accuracy"] for c in advice[name].candidates
                                                     if c["strategy"] == "head"), None)))
    return sorted(_mark_pareto(scores), key=lambda b: (-b.score, b.latency_ms[1]))


def pick_backbone(scores: list[BackboneScore], max_latency_ms: float | None) -> BackboneScore:
    """The most accurate backbone within the latency budget (batch 1); ties go to the faster."""
    fitting = [b for b in scores if max_latency_ms is None or b.latency_ms[1] <= max_latency_ms]
    if not fitting:
        fastest = min(scores, key=lambda b: b.latency_ms[1])
        raise ZooError(f"No backbone answers within {max_latency_ms:g} ms here (the fastest, {fastest.model}, "
                       f"takes {fastest.latency_ms[1]:.1f} ms at batch 1): raise --max-latency-ms.")
    return max(fitting, key=lambda b: (b.score, -b.latency_ms[1]))


def ranking_lines(scores: list[BackboneScore]) -> list[str]:
    rows = [("backbone", "input", "probe score", "best candidate", "ms @1", "ms @8", "Pareto")]
    for b in scores:
        rows.append((b.model, str(b.input_size), f"{100 * b.score:.1f}% ± {100 * b.std:.1f}", b.best,
                     f"{b.latency_ms[1]:.1f}", f"{b.latency_ms[8]:.1f}", "yes" if b.pareto else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    provider = scores[0].provider if scores else ""
    return [f"Backbones ranked by held-out probe score on the training split; ONNX Runtime latency ({provider}):"] + [
        "  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
