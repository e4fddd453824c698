"""TorchServe archives: `<name>.mar` (classifier) and `<name>-features.mar` (bottleneck extractor).

Each archive holds the model (the ONNX graph variant the export folder's deploy.json names, with
the fp32 graph beside it to fall back to, run by ONNX Runtime; or with runtime "torch" a
torch.export program), the handler, handlers/zoo_serving.py, copies of zoo/preprocess.py and
zoo/inference.py named zoo_preprocess.py and zoo_inference.py, preprocess.json, labels.json,
ood.npz (the OOD summary, when the export has one) and serving.json (runtime, model file and its
variant, fallback file, output, OOD file and the output it reads).
Nothing in it imports the zoo package, so it runs on any TorchServe with numpy, Pillow and
onnxruntime (or torch). torch-model-archiver does the packing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from zoo.atomic import atomic_write
from zoo.deployment import FP32, deployed
from zoo.errors import UsageError, ZooError
from zoo.export.formats import FEATURES_SUFFIX, Runtime, check_archive_name
from zoo.inference import OOD_FILE

if TYPE_CHECKING:
    from zoo.backbones import ZooModel

ARCHIVE_VERSION = "1.0"  # TorchServe's model version; `zoo serve` registers this version
HANDLERS_DIR = Path(__file__).resolve().parent.parent / "handlers"
DEFAULT_MODEL_STORE = Path("model_store")
MAX_PIXELS_PER_REQUEST = 128_000_000  # the sum over a request's images (each alone: preprocess.json's max_pixels)
HANDLER_MODULES = ("zoo_serving.py", "zoo_requests.py")  # shared by both handlers, copied into every archive


TORCH_PROGRAM = "model.pt2"  # one torch.export program for both archives: (probabilities, features)
# kind -> (handler file, ONNX file, ONNX output name, torch program output index, archive name suffix)
KINDS = {
    "classifier": ("classifier_handler.py", "classifier.onnx", "probabilities", 0, ""),
    "features": ("features_handler.py", "features.onnx", "features", 1, FEATURES_SUFFIX),
}


def archive_names(name: str) -> dict[str, str]:
    """kind -> TorchServe model name (and .mar file stem)."""
    return {kind: name + spec[4] for kind, spec in KINDS.items()}


def _zoo_module_copies() -> dict[str, Path]:
    """Archive file name -> source of the zoo modules the handlers import under those names (no zoo package)."""
    import zoo.inference
    import zoo.preprocess

    return {"zoo_preprocess.py": Path(zoo.preprocess.__file__), "zoo_inference.py": Path(zoo.inference.__file__)}


def stage_model_dir(export_dir: Path, kind: str, runtime: Runtime | str, out_dir: Path,
                    default_topk: int = 5, max_images_per_request: int = 32, variant: str | None = None) -> Path:
    """Lay out the files of one archive in out_dir, exactly as TorchServe unpacks them.

    The archiver packs this folder; tests load a handler straight from it. `variant` overrides
    the one deploy.json names (the benchmarks serve fp32 and int8 of one export side by side).
    """
    runtime = Runtime(runtime)
    handler, onnx_file, output, program_output, _ = KINDS[kind]
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    model_file, chosen = TORCH_PROGRAM, FP32
    if runtime is Runtime.onnx:  # the deployed variant, and fp32 beside it (missing fp32: said below)
        model_file, chosen = deployed(export_dir, kind, variant) if (export_dir / onnx_file).is_file() \
            else (onnx_file, FP32)
    needed = list(dict.fromkeys([model_file, onnx_file if runtime is Runtime.onnx else model_file,
                                 "preprocess.json", "labels.json"]))
    missing = [f for f in needed if not (export_dir / f).is_file()]
    needed += [f"{f}.data" for f in needed if (export_dir / f"{f}.data").is_file()]  # ONNX weights beside a graph
    if missing:
        hint = "export with `--runtime torch`" if runtime is Runtime.torch else "run `zoo export RUN_DIR` first"
        raise ZooError(f"{export_dir} lacks {', '.join(missing)}: {hint}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in needed:
        shutil.copyfile(export_dir / f, out_dir / f)
    shutil.copyfile(HANDLERS_DIR / handler, out_dir / handler)
    for module in HANDLER_MODULES:
        shutil.copyfile(HANDLERS_DIR / module, out_dir / module)
    for name, source in _zoo_module_copies().items():
        shutil.copyfile(source, out_dir / name)
    # The OOD summary travels in both archives; the classifier handler scores every image with it. An export
    # made before it existed has none, and its answers then carry no ood field.
    ood_file = OOD_FILE if (export_dir / OOD_FILE).is_file() else None
    if ood_file:
        shutil.copyfile(export_dir / OOD_FILE, out_dir / OOD_FILE)
    settings = {"kind": kind, "runtime": runtime.value, "model_file": model_file, "variant": chosen,
                # the fp32 graph a variant falls back to when it cannot load on the server
                "fallback_file": onnx_file if model_file != onnx_file and runtime is Runtime.onnx else None,
                "output": output if runtime is Runtime.onnx else program_output, "default_topk": default_topk,
                # where the classifier's pooled features come from: the graph's "features" output, the program's 2nd
                "ood_file": ood_file, "ood_output": "features" if runtime is Runtime.onnx else 1,
                "max_images_per_request": max_images_per_request, "max_pixels_per_request": MAX_PIXELS_PER_REQUEST,
                # ONNX Runtime's CPU kernels give each image of a same-shape group the bits it gets
                # alone (tested); PyTorch's may not, so the torch runtime runs images one by one.
                "max_group": 8 if runtime is Runtime.onnx else 1}
    (out_dir / "serving.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out_dir


def write_archives(export_dir: Path, name: str, model_store: Path = DEFAULT_MODEL_STORE,
                   runtime: Runtime | str = Runtime.onnx, run_dir: Path | None = None,
                   default_topk: int = 5, variant: str | None = None) -> list[Path]:
    """Write <name>.mar and <name>-features.mar into model_store; returns their paths.

    Each holds the variant deploy.json names (or `variant`). With runtime "torch" the torch.export
    program is made from run_dir first (into export_dir).
    """
    runtime = Runtime(runtime)
    check_archive_name(name)
    if default_topk < 1:
        raise UsageError("--topk must be at least 1: give how many classes an answer lists by default.")
    export_dir, model_store = Path(export_dir), Path(model_store)
    if runtime is Runtime.torch and (run_dir is not None or not (export_dir / TORCH_PROGRAM).is_file()):
        if run_dir is None:
            raise UsageError("The torch runtime needs the run directory: give it, or use the default onnx runtime.")
        export_torch_program(run_dir, export_dir)
    model_store.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix=".zoo-archive-", dir=model_store) as tmp:
        for kind, model_name in archive_names(name).items():
            stage = stage_model_dir(export_dir, kind, runtime, Path(tmp) / f"stage-{kind}", default_topk,
                                    variant=variant)
            _run_archiver(stage, KINDS[kind][0], model_name, Path(tmp))
        # Both archives are built before either lands: a failure leaves the store as it was, never half a pair,
        # and a server never sees half an archive.
        for model_name in archive_names(name).values():
            os.replace(Path(tmp) / f"{model_name}.mar", model_store / f"{model_name}.mar")
            written.append(model_store / f"{model_name}.mar")
    return written


def _run_archiver(stage: Path, handler: str, model_name: str, export_path: Path) -> None:
    settings = json.loads((stage / "serving.json").read_text())
    extra = sorted(str(p) for p in stage.iterdir() if p.name not in (handler, settings["model_file"]))
    cmd = [sys.executable, "-m", "model_archiver.model_packaging",
           "--model-name", model_name, "--version", ARCHIVE_VERSION,
           "--serialized-file", str(stage / settings["model_file"]), "--handler", str(stage / handler),
           "--extra-files", ",".join(extra), "--export-path", str(export_path), "--force"]
    # The archiver stages files under $TMPDIR/<model name>: a private TMPDIR keeps parallel runs apart.
    scratch = export_path / f"tmp-{model_name}"
    scratch.mkdir()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-400:]
        raise ZooError(f"torch-model-archiver failed for {model_name}: {output}")


def export_torch_program(run_dir: Path, out_dir: Path) -> Path:
    """model.pt2 from a run: a torch.export program returning (probabilities, features) with dynamic
    batch, height and width, which loads with torch alone (no zoo code inside). Both archives hold it."""
    from zoo.run_dir import load_run

    run = load_run(run_dir)
    size = run.preprocess.input_size
    module = _ProbabilitiesAndFeatures(run.model).eval()
    example = torch.randn(2, 3, size, size + 32)  # batch 2 and a non-square shape keep every dim dynamic
    auto = torch.export.Dim.AUTO
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: auto, 2: auto, 3: auto}})
    x = torch.randn(1, 3, size + 17, size + 33)  # batch 1 and odd sides: none of the example's sizes
    with torch.inference_mode():
        gap = max((a - b).abs().max().item() for a, b in zip(program.module()(x), module(x), strict=True))
    if gap > 1e-4:
        raise ZooError(f"The torch program differs from the PyTorch model by {gap:.2g} on a {x.shape[2]}x{x.shape[3]} "
                       "image: report this as a bug.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TORCH_PROGRAM
    atomic_write(path, lambda tmp: torch.export.save(program, str(tmp)), suffix=".pt2")  # save wants .pt2
    return path


class _ProbabilitiesAndFeatures(torch.nn.Module):
    def __init__(self, model: ZooModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return torch.softmax(self.model.forward_head(features), dim=1), features
