"""Shared by the serving tests: a real lite0 run directory, its export, and images in many formats.

Built once per test session (module-level cache, and one for both pytest-xdist workers) because exporting
lite0 takes a while.
"""
from __future__ import annotations

import importlib
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["brick", "grass", "gravel"]  # 3 classes: fewer than TorchServe's stock top-5


@dataclass
class Exported:
    run_dir: Path
    export_dir: Path  # classifier.onnx, features.onnx, preprocess.json, labels.json, ood.npz (+ .pt2 for torch)
    data_dir: Path  # the textures images the export computed its OOD summary and threshold from


_cache: dict[str, Exported] = {}


def write_run(run_dir: Path, num_classes: int = len(LABELS)) -> Path:
    """A run directory as `zoo finetune` writes it: pretrained lite0 and a seeded new classifier."""
    import torch

    from zoo.atomic import atomic_write_json
    from zoo.backbones import create_model, get_spec
    from zoo.run_dir import mark_complete, save_weights

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=num_classes, pretrained=True)
    with torch.no_grad():  # a larger head than the default init so the probabilities are far from uniform
        model.classifier.weight.mul_(8.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {
        "model": "efficientnet_lite0", "num_classes": num_classes, "layer": None,
        "preprocess": get_spec("efficientnet_lite0").preprocess_config().to_json(), "strategy": "head"})
    atomic_write_json(run_dir / "labels.json", LABELS[:num_classes])
    save_weights(model, run_dir / "model.safetensors")
    mark_complete(run_dir)
    return run_dir


def exported(tmp_path_factory) -> Exported:
    """The session's lite0 run, exported to ONNX by zoo.export.onnx_export and to a torch program.

    The export is given a small textures sample (the run's three classes) as its images, so it holds
    the OOD summary (ood.npz) computed from them. Under pytest-xdist the workers share one, made by
    whichever asks first while the other waits on a file lock: no test writes into it."""
    if "lite0" not in _cache:
        import os

        from filelock import FileLock

        shared = os.environ.get("PYTEST_XDIST_WORKER")
        root = tmp_path_factory.getbasetemp().parent / "serve-run" if shared else tmp_path_factory.mktemp("serve-run")
        root.mkdir(exist_ok=True)
        with FileLock(str(root) + ".lock"):
            if not (root / "done").exists():
                _export_lite0(root)
                (root / "done").touch()
        _cache["lite0"] = Exported(root / "run", root / "export", root / "textures")
    return _cache["lite0"]


def _export_lite0(root: Path) -> None:
    from zoo.data.samples import write_sample
    from zoo.export.archive import export_torch_program
    from zoo.export.onnx_export import export_run

    run_dir = write_run(root / "run")
    write_sample("textures", root / "textures", seed=0, limit=60)
    export_run(run_dir, root / "export", data_dir=root / "textures")
    export_torch_program(run_dir, root / "export")


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def sample_images() -> dict[str, bytes]:
    """Real photos from scikit-image in the formats and shapes the server promises to handle."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())          # 512 x 512
    coffee = Image.fromarray(data.coffee())                # 600 x 400
    rocket = Image.fromarray(data.rocket())                # 640 x 427
    chelsea = Image.fromarray(data.chelsea())              # 451 x 300
    camera = Image.fromarray(data.camera())                # 512 x 512, grayscale
    coins = np.asarray(data.coins(), dtype=np.uint16) * 257  # 384 x 303, 16-bit

    wide = coffee.crop((0, 50, 600, 300)).convert("RGBA")  # 600 x 250 with a transparent band
    alpha = np.full((wide.height, wide.width), 255, np.uint8)
    alpha[:, :120] = 0
    alpha[:, 120:240] = 128
    wide.putalpha(Image.fromarray(alpha))

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "square.jpg": _encode(astronaut, "JPEG", quality=90),
        "wide-alpha.png": _encode(wide, "PNG"),
        "tall-gray.png": _encode(camera.crop((150, 0, 350, 512)), "PNG"),   # 200 x 512, mode L
        "cmyk.jpg": _encode(rocket.convert("CMYK"), "JPEG", quality=90),
        "exif-rotated.jpg": _encode(chelsea, "JPEG", quality=90, exif=exif.tobytes()),
        "gray16.png": _encode(Image.fromarray(coins), "PNG"),
        "palette.gif": _encode(chelsea.quantize(64), "GIF"),
        "small.webp": _encode(astronaut.resize((96, 40)), "WEBP", quality=90),
        "photo.bmp": _encode(coffee.crop((100, 0, 400, 400)), "BMP"),
        "photo.tiff": _encode(rocket.crop((0, 0, 500, 300)), "TIFF"),
    }


def bad_inputs() -> dict[str, bytes]:
    """Inputs that must get a 4xx: garbage, a truncated JPEG, nothing, 1x1 pixels, a bomb."""
    from skimage import data

    jpeg = _encode(Image.fromarray(data.astronaut()), "JPEG", quality=90)
    bomb = _encode(Image.new("1", (12_000, 12_000)), "PNG", optimize=True)  # 144 Mpixel in ~20 kB
    return {
        "garbage": bytes(range(256)) * 8,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty": b"",
        "1x1.png": _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "bomb.png": bomb,
    }


def expected_predictions(export_dir: Path, images: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Local ONNX Runtime answers (zoo.edge, one image at a time): what the server must match."""
    from zoo.edge import EdgeModel

    model = EdgeModel(export_dir, kind="classifier")
    results = model.predict(list(images.values()), top_k=len(model.labels), batch_size=1)
    return {name: r.top_k for name, r in zip(images, results, strict=True)}


def expected_ood(export_dir: Path, images: dict[str, bytes]) -> dict[str, dict | None]:
    """The ood field of each image from zoo.edge (one image at a time)."""
    from zoo.edge import EdgeModel

    results = EdgeModel(export_dir, kind="classifier").predict(list(images.values()), top_k=1, batch_size=1)
    return {name: r.ood for name, r in zip(images, results, strict=True)}


def expected_features(export_dir: Path, images: dict[str, bytes]) -> dict[str, np.ndarray]:
    from zoo.edge import EdgeModel

    model = EdgeModel(export_dir, kind="features")
    vectors = model.features(list(images.values()), batch_size=1)
    return {name: r.features for name, r in zip(images, vectors, strict=True)}


class MockContext:
    """Just enough of ts.context.Context for a handler's initialize and handle."""

    def __init__(self, model_dir: Path, headers: list[dict] | None = None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.headers = headers or []
        self.status: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.response_headers: dict[int, dict[str, str]] = {}

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx] if idx < len(self.headers) else {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value


TINY_LABELS = ["cat", "dog", "fish"]


def tiny_graphs(out: Path, classifier_features: bool = False) -> None:
    """classifier.onnx and features.onnx by the export contract: input "image" [N,3,H,W] (dynamic),
    outputs "logits"/"probabilities" (and "features" with classifier_features, as zoo exports it now)
    and "features" [N,8]. 1x1 conv, ReLU, global pooling, linear."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "conv_b"),
             numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32) * 3, "fc_w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    body = [helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["features"])]
    head = [helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])

    def out_info(name, dim):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", dim])

    pooled = [out_info("features", 8)] if classifier_features else []
    graphs = {"classifier": (body + head, [out_info("logits", 3), out_info("probabilities", 3), *pooled], inits),
              "features": (body, [out_info("features", 8)], inits[:2])}
    for kind, (nodes, outputs, weights) in graphs.items():
        model = helper.make_model(helper.make_graph(nodes, kind, [image], outputs, weights),
                                  opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        onnx.save_model(model, str(out / f"{kind}.onnx"))


def load_handler(model_dir: Path, kind: str):
    """Import the handler from the staged archive folder, as TorchServe does (the folder on sys.path)."""
    sys.path.insert(0, str(model_dir))
    try:
        for name in ("zoo_serving", "zoo_requests", "zoo_preprocess", "zoo_inference", f"{kind}_handler"):
            sys.modules.pop(name, None)  # each staged folder gets its own copy
        module = importlib.import_module(f"{kind}_handler")
    finally:
        sys.path.remove(str(model_dir))
    cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__)
    handler = cls()
    context = MockContext(model_dir)
    handler.initialize(context)
    return handler, module


def write_tiny_export(out: Path, ood: bool = False) -> Path:
    """An export folder with the tiny graphs, a 32-px preprocess.json and three labels; with `ood`, a
    classifier that answers its features too and an ood.npz from the features of sample_images()
    (written with the module export/ood.py uses, thresholds 0.05 for fp32 and 0.5 for int8)."""
    import json

    from zoo.preprocess import PreprocessConfig

    out.mkdir(parents=True, exist_ok=True)
    tiny_graphs(out, classifier_features=ood)
    PreprocessConfig(input_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), max_size=64).save(
        out / "preprocess.json")
    (out / "labels.json").write_text(json.dumps(TINY_LABELS))
    if ood:
        from zoo.edge import EdgeModel
        from zoo.export.ood import make_scorer, save

        vectors = [r.features for r in EdgeModel(out, kind="features").features(list(sample_images().values()))]
        save(out / "ood.npz", make_scorer(np.stack(vectors), {"fp32": 0.05, "int8": 0.5}))
    return out


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out[: rng.randint(0, len(out))])


def malformed_request(rng: random.Random, good: bytes) -> dict:
    """One hostile request as keyword arguments for requests.post (seeded: the same sequence every run); `good`
    is a valid image, mutated into some of them. The live fuzz tests of both engines send these."""
    junk = [b"", b"hello world", rng.randbytes(rng.randint(1, 400)), _mutate(rng, good), b"{" + rng.randbytes(20),
            b'{"image": 12}', b'{"images": "x"}', b"[" * rng.randint(1, 5000), b'"not base64!"',
            json.dumps({"images": ["aGk="] * 40}).encode(), b"\x89PNG\r\n\x1a\n" + rng.randbytes(30)]
    body = rng.choice(junk)
    topk = rng.choice([None, "0", "-3", "abc", "\u00b2", "1.5", "9" * 30, "2"])
    headers = {"X-Topk": topk} if topk else {}
    form = rng.random()
    if form < 0.25:  # multipart, sometimes with a repeated name
        names = rng.choice([["file"], ["file", "file"], ["a", "b"], ["topk", "file"], ["file", "topk", "topk"]])
        return {"files": [(n, (f"{n}.bin", rng.choice(junk))) for n in names], "headers": headers}
    content_type = rng.choice(["application/octet-stream", "application/json", "text/plain", "image/png",
                               "application/x-custom", "application/x-www-form-urlencoded"])
    return {"data": body, "headers": {**headers, "Content-Type": content_type}}
