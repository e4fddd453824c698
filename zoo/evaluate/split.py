"""Which images `zoo evaluate` scores: one split of the image folder, made exactly as training made it.

The seed and the fractions come from the flags, else from the run's config.json (found beside a
run directory or an export), else from finetune's defaults; DIR/test/<class> is the test split
whenever it exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.data.folder import Sample, load_image_folder
from zoo.errors import UsageError, ZooError

SPLITS = ("test", "val", "all")
DEFAULTS = {"seed": 0, "val_fraction": 0.2, "test_fraction": 0.0}


@dataclass(frozen=True)
class Split:
    name: str
    classes: list[str]
    samples: list[Sample]
    settings: dict[str, Any]  # seed and fractions used, and where the test split came from


def settings_for(run_config: dict[str, Any] | None, given: dict[str, Any]) -> dict[str, Any]:
    """Flags win, then the run's config.json, then the defaults."""
    out = {}
    for key, default in DEFAULTS.items():
        recorded = (run_config or {}).get(key)
        out[key] = given.get(key) if given.get(key) is not None else recorded if recorded is not None else default
    return out


def load_split(data_dir: Path, split: str, settings: dict[str, Any]) -> Split:
    if split not in SPLITS:
        raise UsageError(f"Unknown split {split!r}: choose one of {', '.join(SPLITS)}.")
    data = load_image_folder(data_dir, val_fraction=settings["val_fraction"], seed=settings["seed"],
                             test_fraction=settings["test_fraction"])
    samples = {"test": data.test, "val": data.val, "all": data.train + data.val + data.test}[split]
    if split == "test" and not samples:
        raise ZooError(f"{data_dir} has no test split: add {Path(data_dir) / 'test'}/<class> folders, pass "
                       "--test-fraction (the run's own if it held one out), or choose --split val.")
    if not samples:
        raise ZooError(f"The {split} split of {data_dir} holds no image: add images, or choose another --split.")
    return Split(split, list(data.classes), samples, {**settings, "test_split": data.test_source})
