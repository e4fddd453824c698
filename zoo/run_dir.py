"""The run directory contract shared by `zoo finetune` (writer) and `zoo export` / handlers (readers).

A run directory holds config.json (resolved configuration; keys used here: model, num_classes,
layer, preprocess), labels.json (class names in label order), model.safetensors (the ZooModel
state_dict) and the metrics and plots `zoo finetune` adds. Every file is written atomically
(zoo.atomic), and run_complete.json last: it records the size and SHA-256 of the weights, so a run
is finished only when it is there and they match (a full disk, a kill or a damaged copy leaves a
run that readers refuse in one sentence, never one that merely looks finished).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zoo.atomic import atomic_write, atomic_write_json
from zoo.backbones import ZooModel, create_model
from zoo.errors import ZooError
from zoo.log import get_logger
from zoo.preprocess import PreprocessConfig

CONFIG = "config.json"
LABELS = "labels.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
log = get_logger(__name__)

COMPLETE = "run_complete.json"  # written last; see mark_complete
# What run_complete.json checksums: the weights, which nothing else can validate. config.json and labels.json
# are read as JSON and checked field by field (labels against the model's outputs), so a user may edit them.
CHECKED = (WEIGHTS,)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors, never pickle; written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


@dataclass
class TrainedRun:
    run_dir: Path
    config: dict
    labels: list[str]
    preprocess: PreprocessConfig
    model: ZooModel  # in eval mode


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ZooError(f"{path} is missing: give a run directory written by `zoo finetune`.") from None
    except json.JSONDecodeError:
        raise ZooError(f"{path} is not valid JSON: re-run `zoo finetune` to rewrite the run directory.") from None


def build_run_model(config: dict) -> ZooModel:
    """The architecture a run's weights belong to (no pretrained download: the run holds every weight)."""
    model = create_model(config["model"], num_classes=config["num_classes"], pretrained=False)
    if config.get("layer"):
        model = model.truncated(config["layer"], config["num_classes"])
    return model


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def mark_complete(run_dir: Path | str) -> None:
    """The last write of a finished run: the weights' size and checksum."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / COMPLETE, {"files": {name: file_digest(run_dir / name) for name in CHECKED}})


def is_complete(run_dir: Path | str) -> bool:
    return (Path(run_dir) / COMPLETE).is_file() or _finished_before_markers(Path(run_dir))


def _finished_before_markers(run_dir: Path) -> bool:
    """A run written before run_complete.json existed: then the weights were written last (after metrics.json),
    so weights and metrics together meant finished. Such runs stay usable (and are never retrained by
    --resume), without a checksum to check."""
    return not (run_dir / COMPLETE).is_file() and (run_dir / WEIGHTS).is_file() and (run_dir / METRICS).is_file()


def check_complete(run_dir: Path) -> None:
    """One sentence unless the run finished and its files are the ones it finished with."""
    if _finished_before_markers(run_dir):
        log.info(f"{run_dir} predates run_complete.json: its weights are used without a checksum check.")
        return
    if not is_complete(run_dir):
        raise ZooError(f"{run_dir} is not a finished run (no {COMPLETE}: it was interrupted or its last writes "
                       "failed): finish it with `zoo finetune ... --resume`.")
    recorded = read_json(run_dir / COMPLETE).get("files", {})
    for name in CHECKED:
        path = run_dir / name
        if not path.is_file():
            raise ZooError(f"{path} is missing from a finished run: restore it, or re-run `zoo finetune`.")
        if name in recorded and file_digest(path) != recorded[name]:
            raise ZooError(f"{path} is damaged or was changed since the run finished (its size or checksum "
                           "differs from run_complete.json): restore it, or re-run `zoo finetune`.")


def load_weights(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for empty, truncated or foreign files
        raise ZooError(f"{weights} is not a readable safetensors file ({type(e).__name__}): restore it, or re-run "
                       "`zoo finetune`.") from None


def load_run(run_dir: Path | str) -> TrainedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ZooError(f"{run_dir} is not a run directory: give the --out folder of a `zoo finetune` run.")
    config = read_json(run_dir / CONFIG)
    labels = read_json(run_dir / LABELS)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise ZooError(f"{weights} is missing: the run did not finish; resume it with `zoo finetune ... --resume`.")
    check_complete(run_dir)
    preprocess = read_preprocess(config, run_dir / CONFIG)
    model = build_run_model(config)
    state = load_weights(weights)
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ZooError(f"{weights} does not match {config['model']} ({len(missing)} keys differ): "
                       "re-run `zoo finetune`.")
    model.load_state_dict(state, strict=True)
    if not isinstance(labels, list) or len(labels) != model.num_classes:
        raise ZooError(f"{run_dir / LABELS} names {len(labels) if isinstance(labels, list) else 'no list of'} "
                       f"labels for a model with {model.num_classes} outputs: restore it, or re-run `zoo finetune`.")
    return TrainedRun(run_dir, config, labels, preprocess, model.eval())


def read_preprocess(config: dict, where: Path) -> PreprocessConfig:
    try:
        return PreprocessConfig.from_json(config["preprocess"])
    except (KeyError, TypeError, ValueError) as e:
        raise ZooError(f"The preprocessing in {where} is not valid ({e}): re-run `zoo finetune`.") from None
