"""`zoo finetune`: an image folder in, a trained classifier and its run directory out.

`finetune` reads as its phases: resolve the options (the advisor's choices included), load the
data, plan the model and recipe, prepare the run directory, fit, evaluate, write. Every check a
user can fail runs before the run directory is touched, and each epoch ends with an atomic
checkpoint, so an interruption leaves a run that `--resume` continues to the same result.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from zoo.atomic import atomic_write_bytes, atomic_write_json, remove_leftovers, writing
from zoo.cpu_memory import heap_reuse
from zoo.log import get_logger
from zoo.run_dir import CONFIG, LABELS, METRICS, WEIGHTS, mark_complete, read_json, save_weights
from zoo.training import distributed
from zoo.training.checkpoint import remove_checkpoint
from zoo.training.feature_cache import tensors_fingerprint
from zoo.training.fit import FitResult, fit
from zoo.training.metrics import classification_report
from zoo.training.options import FinetuneOptions, Resolved, resolve
from zoo.training.recipe import TrainingData, check_resumable, load_data, make_plan, make_recipe, run_config
from zoo.training.report import model_card, write_history
from zoo.training.selection import SELECTION
from zoo.training.strategies import Plan
from zoo.training.tracking import Tracker

log = get_logger(__name__)


@distributed.in_process_group
def finetune(data_dir: Path | str, options: FinetuneOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune a backbone on the ImageFolder `data_dir`; write the run directory; return its metrics.

    Options are FinetuneOptions' fields, given as an object, as keywords (`strategy="svm"`), or both
    (keywords win). Under torchrun (WORLD_SIZE > 1) every process calls this; they train one model
    together with DDP (see zoo.training.distributed), rank 0 alone writes the run, and each returns
    the metrics.
    """
    started = time.time()
    run = resolve(replace(options or FinetuneOptions(Path(data_dir)), data_dir=Path(data_dir), **overrides))
    if run.state == "complete":
        log.info(f"{run.out} is already complete; its metrics are in {run.out / METRICS}.")
        return distributed.from_main(lambda: read_json(run.out / METRICS))
    with heap_reuse(run.compute.device.type):  # CPU passes reuse freed tensors (zoo.cpu_memory)
        return _train(run, started)


def _train(run: Resolved, started: float) -> dict[str, Any]:
    data = load_data(run)
    plan = make_plan(run, data)
    recipe = make_recipe(run, data, plan)
    config = run_config(run, data, plan, recipe)
    distributed.check_same(config["data"]["fingerprint"], f"The images in {run.options.data_dir} differ between the "
                           "machines of this run: give every node the same copy of the data.")
    distributed.from_main(lambda: prepare_run_dir(run, config, data.classes))
    log.info(f"{run.strategy.name}: {run.options.model} "
             f"({'pretrained' if run.options.pretrained else 'random weights'}), {len(data.train)} train / "
             f"{len(data.val)} val images, {len(data.classes)} classes, augment {'on' if recipe.augment else 'off'}, "
             f"balance {recipe.balance}, on {run.compute.describe()['name']} in {run.compute.precision} -> {run.out}")
    tracker = Tracker(run.out, run.options.log) if distributed.world().is_main else None
    try:
        result = fit(run, data, plan, recipe, config, tracker)
        metrics = evaluate(data, plan, result, recipe.epochs, started)
        if distributed.world().is_main:
            write_results(run.out, config, metrics, result.history, data.classes, plan, tracker)
    finally:
        if tracker is not None:
            tracker.close()
    distributed.barrier()  # every process returns once the run directory is complete
    log.info(f"val accuracy {100 * metrics['accuracy']:.1f}% ({len(data.val)} images) at the best epoch "
             f"({metrics['best_epoch']} of {len(result.history)}), macro-F1 {metrics['macro_f1']:.3f}, min recall "
             f"{metrics['min_recall']:.3f}; run directory {run.out}")
    if metrics.get("test"):
        log.info(f"test accuracy {100 * metrics['test']['accuracy']:.1f}% ({len(data.test)} held-out images): "
                 "the final figure")
    return metrics


def prepare_run_dir(run: Resolved, config: dict[str, Any], classes: list[str]) -> None:
    """Rank 0: check a resumed run against its start, or clear and start a new one."""
    out = run.out
    if run.state == "resume":
        check_resumable(read_json(out / CONFIG), config, out)
    with writing(out):  # a read-only --out is one sentence, before any training
        if run.state == "replace":
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    if run.state != "resume":
        atomic_write_json(out / CONFIG, config)
        atomic_write_json(out / LABELS, classes)


def evaluate(data: TrainingData, plan: Plan, result: FitResult, epochs: int, started: float) -> dict[str, Any]:
    """metrics.json: the val report, what was skipped, and the time taken."""
    world = distributed.world()
    metrics = classification_report(result.val_logits, torch.tensor([r.label for r in data.val]), data.classes)
    test = None
    if result.test_logits is not None:
        test = classification_report(result.test_logits, torch.tensor([r.label for r in data.test]), data.classes)
    metrics.update({
        "best_epoch": result.best_epoch, "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "selection": SELECTION, "test": test,
        "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test),
                   "skipped": len(data.skipped)},
        "skipped": data.skipped,
        "epochs": epochs,
        "epoch_seconds": [h["seconds"] for h in result.history],
        "wall_seconds": time.time() - started,
        "feature_cache": result.cache_report,
    })
    if world.distributed:  # proof that the ranks trained one model: a hash of each rank's final weights
        hashes = distributed.all_gather(tensors_fingerprint(plan.model.state_dict()))
        metrics["distributed"] = {"world_size": world.size, "backend": world.backend, "weights_sha256": hashes,
                                  "ranks_agree": len(set(hashes)) == 1}
        if len(set(hashes)) > 1 and world.is_main:
            log.warning("the processes ended with different weights; rank 0's are saved")
    return metrics


def write_results(out: Path, config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]],
                  classes: list[str], plan: Plan, tracker: Tracker | None = None) -> None:
    """The finished run's files, then run_complete.json: until it is written the run reads as unfinished, so a
    full disk or a kill part-way leaves a run that `--resume` finishes and that export refuses."""
    # matplotlib, imported here: ~0.7 s that ranks other than 0, and runs that stop early, never need
    from zoo.training.plots import plot_confusion, plot_curves

    atomic_write_json(out / METRICS, metrics)
    write_history(out / "history.csv", history)
    title = (f"{config['model']} · {config['strategy']} · val accuracy {100 * metrics['accuracy']:.1f}% "
             f"(epoch {metrics['best_epoch']})")
    plot_confusion(metrics["confusion_matrix"], classes, out / "confusion.png", title)
    plot_curves(history, out / "curves.png", title)
    atomic_write_bytes(out / "model_card.md", model_card(config, metrics, classes).encode())
    if tracker is not None:
        tracker.finish(config, metrics, out / "confusion.png")
    save_weights(plan.model, out / WEIGHTS, metadata={"model": config["model"], "strategy": config["strategy"]})
    mark_complete(out)
    remove_checkpoint(out)
    remove_leftovers(out)
