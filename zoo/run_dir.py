"""The run directory contract shared by `zoo finetune` (writer) and `zoo export` / handlers (readers).

A run directory holds config.json (resolved configuration; keys used here: model, num_classes,
layer, preprocess), labels.json (class names in label order), model.safetensors (the ZooModel
state_dict) and the metrics and plots `zoo finetune` adds. Every file is written atomically
(zoo.atomic), and the weights last: a run directory with weights is a finished one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zoo.atomic import atomic_write
from zoo.backbones import ZooModel, create_model
from zoo.errors import ZooError
from zoo.preprocess import PreprocessConfig

CONFIG = "config.json"
LABELS = "labels.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"


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


def load_run(run_dir: Path | str) -> TrainedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ZooError(f"{run_dir} is not a run directory: give the --out folder of a `zoo finetune` run.")
    config = read_json(run_dir / CONFIG)
    labels = read_json(run_dir / LABELS)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise ZooError(f"{weights} is missing: the run did not finish; resume it with `zoo finetune ... --resume`.")
    model = build_run_model(config)
    state = load_file(str(weights))
    missing = set(model.state_dict()) ^ set(state)
    if missing:
        raise ZooError(f"{weights} does not match {config['model']} ({len(missing)} keys differ): "
                       "re-run `zoo finetune`.")
    model.load_state_dict(state, strict=True)
    return TrainedRun(run_dir, config, labels, PreprocessConfig.from_json(config["preprocess"]), model.eval())
