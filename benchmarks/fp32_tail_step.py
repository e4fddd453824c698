"""A `full` training step of lite0 (batch 32, 224 px, channels-last, bf16 autocast) with the fp32 tail
(ZooModel._tail: pooling and the classifier in fp32) against the bf16 tail before it, in alternating rounds.

    python benchmarks/fp32_tail_step.py [--rounds 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from zoo.backbones.model import ZooModel
from zoo.backbones.registry import create_model


def bf16_tail(self: ZooModel, x: torch.Tensor, head: bool) -> torch.Tensor:
    """The tail before: pooling and the classifier under autocast like the stages."""
    x = self.pre_logits(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
    return self.forward_head(x) if head else x


def seconds_per_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     steps: int = 3) -> float:
    tick = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - tick) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    tails = {"bf16 tail (before)": bf16_tail, "fp32 tail (now)": ZooModel._tail}
    model = create_model("efficientnet_lite0", 10, pretrained=True).train().to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds_per_step(model, opt, x, y, 1)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in tails}
    for r in range(args.rounds):
        for name in (list(tails) if r % 2 == 0 else list(reversed(tails))):
            ZooModel._tail = tails[name]  # type: ignore[method-assign]
            times[name].append(seconds_per_step(model, opt, x, y))
    base = statistics.median(times["bf16 tail (before)"])
    for name, values in times.items():
        print(f"{name:<20} median {statistics.median(values):.3f} s/step  best {min(values):.3f}  "
              f"{statistics.median(values) / base:.3f}x  rounds " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
