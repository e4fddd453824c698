"""The run's own images, which an export needs: parity inputs, calibration and the accuracy gate.

The image folder comes from config.json (where `zoo finetune` recorded it) or from `--data` when
it moved. Without it, parity still runs, on real photos that ship with scikit-image.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TypeVar

from PIL import Image

from zoo.data.folder import ImageFolderData, Sample, load_image_folder
from zoo.errors import UsageError, ZooError
from zoo.preprocess import ImageError, PreprocessConfig, load_rgb
from zoo.run_dir import TrainedRun

S = TypeVar("S", bound=Sample)


def run_data(run: TrainedRun, data_dir: Path | str | None) -> ImageFolderData | None:
    """The run's ImageFolder split (train, val), or None when neither the caller nor config.json says where."""
    cfg = run.config
    root = data_dir or (cfg.get("data") or {}).get("dir")  # `zoo finetune` records {"dir": ..., ...}
    if not root:
        return None
    if not Path(root).is_dir():
        if data_dir:
            raise UsageError(f"{root} is not a folder: give the image folder the run was trained on with --data.")
        return None
    # The split the run used: the int8 gate reads val, calibration reads train, and the test split stays unseen.
    data = load_image_folder(root, val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0),
                             test_fraction=cfg.get("test_fraction") or 0.0)
    if list(data.classes) != list(run.labels):
        raise ZooError(f"The classes in {root} ({', '.join(data.classes[:5])}…) differ from the run's labels.json: "
                       "give the image folder the run was trained on with --data.")
    return data


def spread(samples: list[S], n: int) -> list[S]:
    """Up to n samples taken round-robin over classes, in a stable order."""
    by_label: dict[int, list[S]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    out: list[S] = []
    queues = [list(v) for _, v in sorted(by_label.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _packaged_photos() -> list[Path]:
    """Real photos from scikit-image's data folder: parity images when the run's data is not at hand."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "data"
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
    return [folder / n for n in names if (folder / n).is_file()]


def parity_images(data: ImageFolderData | None, cfg: PreprocessConfig,
                  n: int = 5) -> tuple[list[Image.Image], list[str]]:
    candidates = [s.path for s in spread(data.val or data.train, 4 * n)] if data is not None else []
    candidates += _packaged_photos()
    images, names = [], []
    for path in candidates:
        try:
            images.append(load_rgb(path, cfg))
            names.append(str(path))
        except ImageError:
            continue
        if len(images) == n:
            break
    if not images:
        raise ZooError("No readable image was found for the parity check: give the run's image folder with --data.")
    while len(images) < n:  # fewer images than the largest batch: repeat them
        images.append(images[len(images) % len(names)])
    return images, names
