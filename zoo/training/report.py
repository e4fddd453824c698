"""The human-readable files of a run: history.csv and model_card.md."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from zoo.atomic import atomic_write_bytes

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                   "backbone_lr", "seconds"]


def write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _test_lines(metrics: dict) -> list[str]:
    """The held-out test split's figure, the one to quote (the val split chose the epoch)."""
    test = metrics.get("test")
    if not test:
        return []
    return ["## Result on the held-out test split", "",
            f"- accuracy {_pct(test['accuracy'])} on {metrics['images']['test']} images that took no part in any "
            f"choice; top-{test['top_k']['k']} {_pct(test['top_k']['accuracy'])}; macro-F1 {test['macro_f1']:.3f}; "
            f"expected calibration error {test['calibration']['ece']:.3f}", ""]


def model_card(config: dict, metrics: dict, labels: list[str]) -> str:
    data = config["data"]
    rows = "\n".join(f"| {c} | {data['train_counts'][c]} | {m['support']} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} | {m['f1']:.3f} |" for c, m in metrics["per_class"].items())
    frozen = config["freeze_until"] or "nothing"
    lines = [
        f"# {config['model']} fine-tuned on {Path(data['dir']).name}",
        "",
        f"An image classifier for {len(labels)} classes "
        f"({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''}), "
        f"trained by `zoo finetune` with the `{config['strategy']}` strategy "
        f"({'ImageNet-pretrained' if config['pretrained'] else 'randomly initialised'} backbone, "
        f"frozen up to: {frozen}).",
        "",
        *_test_lines(metrics),
        "## Results on the validation set",
        "",
        f"The weights are those of epoch {metrics['best_epoch']} of {metrics['epochs_run']}, chosen on "
        f"{metrics['selection']}" + ("; --patience stopped the run early." if metrics["stopped_early"] else "."),
        "",
        f"- accuracy {_pct(metrics['accuracy'])} on {metrics['images']['val']} images; "
        f"top-{metrics['top_k']['k']} {_pct(metrics['top_k']['accuracy'])}",
        f"- macro-F1 {metrics['macro_f1']:.3f}; lowest per-class recall {metrics['min_recall']:.3f}",
        f"- {metrics['images']['skipped']} unreadable files were skipped (listed in metrics.json)",
        "",
        "| class | train images | val images | precision | recall | F1 |",
        "| --- | --- | --- | --- | --- | --- |",
        rows,
        "",
        "## Training",
        "",
        f"- {config['epochs']} epochs, batch size {config['batch_size']}, AdamW, cosine schedule; learning rate "
        f"{config['lr']:g} for the new classifier, {config['backbone_lr']:g} for trainable pretrained weights",
        f"- {config['trainable_parameters']['count']:,} trainable parameters of "
        f"{config['trainable_parameters']['count'] + config['frozen_parameters']:,}",
        f"- augmentation: {'on' if config['augment'] else 'off'}; class balance: {config['balance']}",
        *([f"- BatchNorm statistics of the {bn['layers']} trainable BatchNorm layers recomputed on "
           f"{bn['images']} training images ({bn.get('views', 'inference')} views) after every epoch"]
          if (bn := config.get("batchnorm_recalibration")) else []),
        f"- seed {config['seed']}; wall time {metrics['wall_seconds']:.0f} s",
        "",
        "## Using it",
        "",
        "Preprocessing is in config.json (`preprocess`): RGB, shorter side resized to "
        f"{config['preprocess']['input_size']} keeping the aspect ratio, no crop, "
        f"then (x * {config['preprocess']['value_scale']:.6g} - mean) / std. "
        "`zoo.run_dir.load_run(RUN_DIR)` loads the model; `zoo export` turns it into ONNX and TorchServe archives.",
        "",
        "## Limits",
        "",
        f"The figures come from {metrics['images']['val']} validation images drawn from the same source as the "
        "training images; expect lower accuracy on images that look different (other cameras, lighting, classes "
        "not in the list, which the model will still map to one of its classes).",
        "",
    ]
    return "\n".join(lines)
