"""`zoo finetune` end to end: the run directory's files, and that they describe the saved model."""
import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from zoo.cli import app
from zoo.preprocess import preprocess
from zoo.run_dir import load_run


def test_cli_writes_a_complete_run_directory(runner, tiny_textures, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(tiny_textures), "--strategy", "head", "--epochs", "4",
                                 "--no-augment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "val accuracy" in result.output
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "labels.json", "model.safetensors", "metrics.json", "history.csv",
                     "confusion.png", "curves.png", "model_card.md", "run_complete.json", "tensorboard"}, \
        "no checkpoint or temporary file is left"
    config = json.loads((out / "config.json").read_text())
    for key in ("model", "num_classes", "layer", "preprocess", "strategy", "lr", "backbone_lr", "seed",
                "trainable_parameters", "frozen_parameters", "epochs", "augment", "balance"):
        assert key in config, key
    assert json.loads((out / "labels.json").read_text()) == ["brick", "grass", "gravel"]
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "top_k", "per_class", "confusion_matrix", "macro_f1", "skipped"} <= set(metrics)
    assert "## Results on the validation set" in (out / "model_card.md").read_text()

    # The saved model, fed by the one preprocessing definition, reproduces the reported confusion matrix.
    run = load_run(out)
    cm = np.zeros((3, 3), int)
    for label, cls in enumerate(run.labels):
        for path in sorted((tiny_textures / "val" / cls).glob("*.png")):
            with torch.no_grad():
                logits = run.model(torch.from_numpy(preprocess(path, run.preprocess))[None])
            cm[label, int(logits.argmax())] += 1
    assert cm.tolist() == metrics["confusion_matrix"]


def test_plots_are_real_images(tiny_textures, tmp_path, runner):
    out = tmp_path / "run"
    assert runner.invoke(app, ["finetune", str(tiny_textures), "--epochs", "3", "--no-augment",
                               "--out", str(out)]).exit_code == 0
    for name in ("confusion.png", "curves.png"):
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert min(img.shape) > 200 and img.std() > 10, f"{name} looks blank"


def test_import_zoo_does_not_import_torch_but_offers_finetune():
    code = ("import sys, zoo, zoo.preprocess; assert 'torch' not in sys.modules; "
            "f = zoo.finetune; assert callable(f) and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
