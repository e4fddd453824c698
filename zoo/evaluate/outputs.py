"""What `zoo evaluate` writes: evaluation.json, report.md, confusion.png and reliability.png.

The folder is built under a temporary name beside its target and renamed into place, so a reader
never sees half a report, and an existing folder is replaced only when asked.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from zoo.atomic import atomic_write_bytes, atomic_write_json
from zoo.errors import UsageError

FILES = ("evaluation.json", "report.md", "confusion.png", "reliability.png")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(result: dict[str, Any]) -> str:
    m, lat = result["metrics"], result["latency_ms"]
    rows = "\n".join(f"| {c} | {v['support']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |"
                     for c, v in m["per_class"].items())
    return "\n".join([
        f"# Evaluation of {result['target']}",
        "",
        f"{result['kind']}, on the {result['split']} split of {result['data_dir']} ({result['images']} images"
        + (f", {len(result['unreadable'])} unreadable or refused" if result["unreadable"] else "") + ").",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| top-1 accuracy | {_pct(m['accuracy'])} |",
        f"| top-{m['top_k']['k']} accuracy | {_pct(m['top_k']['accuracy'])} |",
        f"| macro-F1 | {m['macro_f1']:.4f} |",
        f"| lowest per-class recall | {m['min_recall']:.4f} |",
        f"| log loss | {m['loss']:.4f} |",
        f"| expected calibration error ({m['calibration']['bins']} bins) | {m['calibration']['ece']:.4f} |",
        f"| latency per image: mean, p50, p95 | {lat['mean']:.1f}, {lat['p50']:.1f}, {lat['p95']:.1f} ms |",
        "",
        "| class | images | precision | recall | F1 |",
        "| --- | --- | --- | --- | --- |",
        rows,
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![reliability diagram](reliability.png)",
        "",
        f"Latency is {result['latency_note']}.",
        "",
        *_ood_lines(result.get("ood")),
    ])


def _ood_lines(ood: dict[str, Any] | None) -> list[str]:
    if not ood:
        return []
    return [
        f"## Out-of-distribution score against {ood['folder']}",
        "",
        f"{ood['in_images']} images of the split (in distribution) against {ood['out_images']} images of the folder.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| AUROC | {ood['auroc']:.4f} |",
        f"| threshold | {ood['threshold']:.4f} |",
        f"| false alarms on the split (score above the threshold) | {_pct(ood['false_alarm_rate'])} |",
        f"| folder images flagged | {_pct(ood['detection_rate'])} |",
        f"| median score: split, folder | {ood['in_score_median']:.4f}, {ood['out_score_median']:.4f} |",
        "",
    ]


def default_out(target: str, split: str) -> Path:
    """Beside what was scored (RUN/evaluate-test, EXPORT/evaluate-test, evaluate-<file>-test); a URL's in the
    working folder (evaluate-<model>-test)."""
    if target.startswith(("http://", "https://")):
        return Path(f"evaluate-{target.rstrip('/').rsplit('/', 1)[-1]}-{split}")
    path = Path(target)
    return path / f"evaluate-{split}" if path.is_dir() else path.parent / f"evaluate-{path.stem}-{split}"


def check_out(out: Path, force: bool) -> None:
    """Before any image is scored: an existing folder is replaced only with --force, and only if it is ours."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / FILES[0]).is_file()):
        raise UsageError(f"{out} exists and is not an evaluation folder: choose another --out.")
    if any(out.iterdir()) and not force:
        raise UsageError(f"{out} already holds an evaluation: pass --force to replace it, or choose another --out.")


def write(out: Path, result: dict[str, Any]) -> None:
    from zoo.training.plots import plot_confusion, plot_reliability

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        m = result["metrics"]
        title = f"{Path(result['target']).name} · {result['split']} · top-1 {_pct(m['accuracy'])}"
        plot_confusion(m["confusion_matrix"], result["classes"], staging / "confusion.png", title)
        plot_reliability(m["calibration"], staging / "reliability.png", title)
        atomic_write_bytes(staging / "report.md", markdown(result).encode())
        atomic_write_json(staging / "evaluation.json", result)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
