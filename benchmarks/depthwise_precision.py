"""Depthwise convolutions under CPU bf16 autocast: each of efficientnet_lite0's depthwise layers trained
in bf16 and in fp32, and the whole training step with them in bf16 (autocast alone) against fp32
(zoo.hardware.Compute.training_pass), in alternating rounds in one process.

    python benchmarks/depthwise_precision.py [--rounds 3] [--batch 32] [--size 224]

Batches of random images in channels-last, freed tensors reused from the heap (zoo.cpu_memory), as
`zoo finetune` trains on a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn


def _layer_ms(conv: nn.Conv2d, shape: tuple[int, ...], dtype: torch.dtype, batch: int) -> float:
    """Forward and backward of a depthwise layer of this one's shape alone (a plain nn.Conv2d: stride-2
    layers without their SAME padding), in `dtype`, ms per batch."""
    layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=False).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, *shape[1:], dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn_like(layer(x))
    for _ in range(2):
        layer(x).backward(grad)
    tick = time.perf_counter()
    for _ in range(3):
        layer(x).backward(grad)
    return (time.perf_counter() - tick) / 3 * 1000


def layers(batch: int, size: int) -> None:
    from zoo.backbones import create_model

    model = create_model("efficientnet_lite0", num_classes=10, pretrained=True).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: shapes.setdefault(n, tuple(a[0].shape)) and None)
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    modules, total = dict(model.named_modules()), {"fp32": 0.0, "bf16": 0.0}
    print(f"each depthwise layer alone, forward + backward, batch {batch} at {size} px (ms):")
    for name, shape in shapes.items():
        conv = modules[name]
        fp32, bf16 = _layer_ms(conv, shape, torch.float32, batch), _layer_ms(conv, shape, torch.bfloat16, batch)
        total["fp32"] += fp32
        total["bf16"] += bf16
        print(f"  {name:34} {conv.kernel_size[0]}x{conv.kernel_size[0]} stride {conv.stride[0]} {conv.in_channels:5} "
              f"channels at {shape[2]:3} px   fp32 {fp32:6.1f}   bf16 {bf16:6.1f}   bf16/fp32 {bf16 / fp32:5.2f}")
    print(f"  all {len(shapes)}: fp32 {total['fp32']:.0f} ms, bf16 {total['bf16']:.0f} ms "
          f"({total['bf16'] / total['fp32']:.2f}x)")


def steps(rounds: int, batch: int, size: int) -> None:
    from zoo.backbones import create_model
    from zoo.hardware import Compute

    compute = Compute(torch.device("cpu"), "bf16")
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    nets = {}
    for variant in ("depthwise in bf16 (autocast alone)", "depthwise in fp32 (training_pass)"):
        torch.manual_seed(0)
        model = create_model("efficientnet_lite0", num_classes=10, pretrained=True).train()
        nets[variant] = (model.to(memory_format=torch.channels_last), torch.optim.AdamW(model.parameters(), lr=1e-4))

    def step(variant: str) -> float:
        model, optimizer = nets[variant]
        tick = time.perf_counter()
        with compute.training_pass(model) if "fp32" in variant else contextlib.nullcontext():
            with compute.autocast():
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - tick

    times: dict[str, list[float]] = {v: [] for v in nets}
    for v in nets:
        step(v)  # warm-up
    for r in range(rounds):
        for v in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
            times[v] += [step(v), step(v)]
    base = statistics.median(times[next(iter(nets))])
    print(f"\nwhole training step, bf16 autocast, channels-last, batch {batch} at {size} px, {rounds} alternating "
          "rounds of 2 steps (median):")
    for v, t in times.items():
        print(f"  {v:36} {statistics.median(t):6.3f} s   {base / statistics.median(t):.2f}x")


def main() -> None:
    from zoo.cpu_memory import heap_reuse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    with heap_reuse("cpu"):
        layers(args.batch, args.size)
        steps(args.rounds, args.batch, args.size)


if __name__ == "__main__":
    main()
