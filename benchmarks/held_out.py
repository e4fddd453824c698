"""A larger yardstick than the val split: images of a packaged set that its sample left out.

On val sets of 80 to 100 images one image is a point or more. Sets of distinct pictures (digits,
silhouettes, emoji) hold many more images than their 500-image samples; those left out were never seen
in training, so up to N of them, written as DIR/test/<class>, score a finished run on hundreds of images.
Two runs scored on the same test images give a paired difference, in which a point is not one image.
The crop sets (textures, photos) are left out: a crop outside the sample may overlap a training crop.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

HELD_OUT = {"digits500", "silhouettes", "emoji"}  # benchmark names of the sets of distinct images


def write_test(sample: str, limit: int | None, data: Path, seed: int, count: int) -> int:
    """Write up to `count` images of the sample set `sample` that write_sample(sample, seed=seed, limit=limit)
    left out as data/test/<class>, as evenly over the classes as they allow; return how many."""
    from zoo.data.samples import SAMPLES

    seen = {hashlib.sha256(img.tobytes()).digest() for _, _, img in SAMPLES[sample].build(seed, limit)[0]}
    items, classes = SAMPLES[sample].build(seed, None)
    rest: dict[str, list] = {c: [] for c in classes}
    for _, cls, img in items:
        if hashlib.sha256(img.tobytes()).digest() not in seen:
            rest[cls].append(img)
    rng = random.Random(seed)
    for images in rest.values():
        rng.shuffle(images)
    written = 0
    for cls, images in rest.items():
        folder = data / "test" / cls
        folder.mkdir(parents=True)
        for i, img in enumerate(images[: count // len(classes)]):
            img.save(folder / f"{cls}_{i:05d}.png")
            written += 1
    return written


def score_runs(work: Path, dataset: str, runs: dict[str, dict]) -> int:
    """Score the finished runs work/<dataset>-<name> on work/<dataset>/test with this tree's `zoo evaluate`
    (PyTorch, on the CPU), adding test_accuracy to each run's row; return how many test images there were."""
    from zoo.evaluate.evaluate import evaluate

    images = 0
    for name, row in runs.items():
        result = evaluate(str(work / f"{dataset}-{name}"), work / dataset, split="test", write=False, device="cpu")
        row["test_accuracy"], images = result["metrics"]["accuracy"], result["images"]
    return images
