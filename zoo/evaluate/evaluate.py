"""`zoo evaluate TARGET DATA_DIR`: one split scored by one target, with training's metrics (zoo.metrics)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ZooError
from zoo.evaluate import ood, outputs
from zoo.evaluate.split import Split, load_split, settings_for
from zoo.evaluate.targets import Answer, Target, open_target
from zoo.log import get_logger
from zoo.metrics import classification_report
from zoo.progress import progress_bar

log = get_logger(__name__)


def _check_labels(target: Target, split: Split, data_dir: Path) -> None:
    if target.labels is not None and list(target.labels) != split.classes:
        raise ZooError(f"The classes in {data_dir} ({', '.join(split.classes[:5])}, ...) differ from the model's "
                       f"labels ({', '.join(target.labels[:5])}, ...): give the image folder the model was trained "
                       "on.")


def _latency(answers: list[Answer]) -> dict[str, float]:
    ms = np.array([1000 * a.seconds for a in answers]) if answers else np.zeros(1)
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}


def score(target: Target, split: Split) -> tuple[list[Answer], dict[str, Any]]:
    """Every image of the split, one at a time (so each is timed alone); the report of the readable ones."""
    with target.pass_over([s.path for s in split.samples]):
        answers = [target.answer(s.path) for s in progress_bar(split.samples, f"evaluating {split.name}",
                                                              total=len(split.samples))]
    scored = [(a, s) for a, s in zip(answers, split.samples, strict=True) if a.probabilities is not None]
    if not scored:
        raise ZooError(f"No image of the {split.name} split could be scored (the first: {answers[0].error}): check "
                       "the images, or the server's logs.")
    probs = np.stack([a.probabilities for a, _ in scored if a.probabilities is not None])
    return answers, classification_report(probs, [s.label for _, s in scored], split.classes)


def evaluate(target: str, data_dir: Path | str, split: str = "test", out: Path | None = None, force: bool = False,
             token: str | None = None, seed: int | None = None, val_fraction: float | None = None,
             test_fraction: float | None = None, write: bool = True,
             ood_folder: Path | str | None = None, device: str = "auto") -> dict[str, Any]:
    """Score `target` on a split of `data_dir`; write the report folder (unless write=False); return the result.

    With `ood_folder`, also the OOD score's AUROC between the split and every image under that folder.
    `device`: where a run (PyTorch) or an export (ONNX Runtime) runs; a server chooses its own."""
    data_dir = Path(data_dir)
    out = Path(out) if out is not None else outputs.default_out(target, split)
    if write:
        outputs.check_out(out, force)
    if target.startswith(("http://", "https://")):  # a server knows no run: flags or the defaults say the split
        chosen = load_split(data_dir, split, settings_for(None, dict(seed=seed, val_fraction=val_fraction,
                                                                    test_fraction=test_fraction)))
        model = open_target(target, token, chosen.classes, device)
    else:
        model = open_target(target, token, [], device)
        chosen = load_split(data_dir, split, settings_for(model.run_config, dict(
            seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)))
    _check_labels(model, chosen, data_dir)
    outside = ood.check_folder(Path(ood_folder), model) if ood_folder is not None else []
    log.info(f"Evaluating {model.name} ({model.kind}) on {len(chosen.samples)} {split} images of {data_dir}")
    answers, report = score(model, chosen)
    result = {
        "target": model.name, "kind": model.kind, "variant": model.variant, "data_dir": str(data_dir), "split": split,
        "split_settings": chosen.settings, "classes": chosen.classes,
        "images": sum(a.probabilities is not None for a in answers),
        "unreadable": [{"path": str(s.path), "reason": a.error} for a, s in zip(answers, chosen.samples, strict=True)
                       if a.probabilities is None],
        "metrics": report, "latency_ms": _latency([a for a in answers if a.probabilities is not None]),
        "latency_note": "per image, one image at a time, decoding and preprocessing included"
                        + ("; over HTTP, the whole round trip" if model.kind.startswith("served") else ""),
        "out": str(out) if write else None,
    }
    if ood_folder is not None:
        result["ood"] = ood.ood_report(model, answers, Path(ood_folder), outside)
    if write:
        outputs.write(out, result)
    return result
