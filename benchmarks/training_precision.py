"""Training-step throughput of one backbone per precision and memory layout, side by side in one run.

What `--precision auto` and the channels_last rule rest on: images/s of full fine-tuning steps
(forward, backward, AdamW) on random 224-px batches, for fp32, bf16 autocast, bf16 + channels_last,
and on CUDA fp16 + channels_last with a gradient scaler. Ratios are against fp32 on the same device.

    python benchmarks/training_precision.py [--device auto] [--batch 64] [--steps 20]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from zoo.backbones import create_model
from zoo.hardware import Compute, resolve_device


def images_per_s(compute: Compute, channels_last: bool, batch: int, steps: int, model_name: str) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, pretrained=False).to(compute.device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = compute.grad_scaler()
    x = torch.randn(batch, 3, 224, 224, device=compute.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=compute.device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with compute.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    if compute.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if compute.device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = [("fp32", False), ("bf16", False), ("bf16", True)]
    if device.type == "cuda":
        rows += [("fp32", True), ("fp16", True)]
    base = None
    print(f"{args.model}, batch {args.batch}, {args.steps} steps on {device}:")
    for precision, channels_last in rows:
        rate = images_per_s(Compute(device, precision), channels_last, args.batch, args.steps, args.model)
        base = base or rate
        print(f"  {precision:<5} {'channels_last' if channels_last else 'contiguous   '} {rate:8.1f} images/s  "
              f"{rate / base:5.2f}x fp32", flush=True)


if __name__ == "__main__":
    main()
