"""What a new input shape costs on a CUDA GPU, side by side in one run: the numbers behind zoo.hardware.gpu_layout.

efficientnet_lite0's forward on batches of 8, for cuDNN with NCHW, cuDNN with NHWC (channels_last) and
PyTorch's own kernels (cuDNN off), in fp32 and bf16 autocast: ms per batch over 12 shapes never seen
before, over the same 12 shapes again, and over 12 batches of one shape. With cuDNN every new shape
builds kernel plans; zoo's inference passes keep each image's aspect ratio, so they meet many shapes.

    python benchmarks/gpu_shapes.py      # needs a CUDA GPU
"""
from __future__ import annotations

import time

import torch

from zoo.backbones import create_model


def ms_per_batch(model: torch.nn.Module, shapes: list[tuple[int, int]], channels_last: bool, bf16: bool) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for h, w in shapes:
            x = torch.randn(8, 3, h, w, device="cuda")
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(shapes) * 1000


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_shapes.py needs a CUDA GPU.")
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False).cuda().eval()
    ms_per_batch(model, [(224, 224)] * 3, False, False)  # CUDA context and first kernels
    print(f"efficientnet_lite0 forward, batches of 8, on {torch.cuda.get_device_name()}: ms per batch")
    variant = 0
    for cudnn, channels_last in ((True, False), (True, True), (False, False)):
        torch.backends.cudnn.enabled = cudnn
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for bf16 in (False, True):
            variant += 1
            fresh = [(160 + 4 * variant, 200 + 4 * i) for i in range(12)]  # shapes no earlier variant used
            new = ms_per_batch(model, fresh, channels_last, bf16)
            again = ms_per_batch(model, fresh, channels_last, bf16)
            name = ("cuDNN " + ("NHWC" if channels_last else "NCHW")) if cudnn else "cuDNN off"
            print(f"  {name:10} {'bf16' if bf16 else 'fp32'}: new shape {new:7.1f}, seen shape {again:5.1f}")


if __name__ == "__main__":
    main()
