"""`zoo finetune --config RUN/config.json DATA_DIR`: run a recorded configuration again.

config.json records the resolved configuration (what `auto` chose included), so a replay trains
the same strategy with the same numbers and, at the same seed on the same machine, the same
weights. Flags given on the command line win over the file; where the run goes (`--out`), the
cache and the number of processes are never taken from it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.errors import UsageError, ZooError

# config.json key -> finetune option, taken as recorded
AS_RECORDED = ("model", "strategy", "epochs", "batch_size", "augment", "balance", "seed", "val_fraction",
               "test_fraction", "patience", "pretrained")


def read_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: give --config the config.json of a `zoo finetune` run.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ZooError(f"{path} is not valid JSON: give --config the config.json of a `zoo finetune` run.") from None
    if not isinstance(config, dict) or not {"model", "strategy", "seed", "preprocess"} <= set(config):
        raise UsageError(f"{path} is not the config.json of a `zoo finetune` run: give --config RUN/config.json.")
    return config


def replay_options(config: dict[str, Any]) -> dict[str, Any]:
    """finetune's keyword options that reproduce the recorded run (before the command line's own flags)."""
    out = {key: config[key] for key in AS_RECORDED if config.get(key) is not None}
    if config.get("lr"):  # svm records no rate
        out["lr"] = config["lr"]
    if config.get("backbone_lr"):  # 0 when nothing pretrained trains: the default says the same
        out["backbone_lr"] = config["backbone_lr"]
    if config["strategy"] == "partial" and config.get("freeze_until"):
        out["freeze_until"] = config["freeze_until"]
    if config["strategy"] == "svm" and config.get("layer"):
        out["layer"] = config["layer"]
    out["warm_head"] = bool(config.get("warm_head", False))  # runs recorded before the option started cold
    if config.get("augment_views"):
        out["views"] = config["augment_views"]
    out["image_size"] = str(config["preprocess"]["input_size"])
    precision = (config.get("compute") or {}).get("precision")
    if precision:
        out["precision"] = precision
    return out
