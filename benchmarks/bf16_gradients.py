"""How far bf16 autocast's weight gradients are from fp32's, per layer, for one batch of lite0.

Relative error |g_bf16 - g_fp32| / |g_fp32| of each weight's gradient, for the same batch, weights
and labels, with BatchNorm on batch statistics (train mode, as `full` trains) and on its running
statistics (eval mode), and in train mode with BatchNorm run in fp32. Dropout is off, so the two
passes differ in precision only; random images and labels, so it needs no data.

    python benchmarks/bf16_gradients.py [--batch 32] [--size 224]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

LAYERS = ["stages.stem.0.weight", "stages.stage2.0.depthwise_conv.weight", "stages.stage4.1.expand_conv.weight",
          "stages.stage6.3.project_conv.weight", "stages.head_conv.0.weight", "classifier.weight"]


def gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    exact, mixed = gradients(model, x, y, False), gradients(model, x, y, True)
    return {n: float((exact[n] - mixed[n]).norm() / exact[n].norm()) for n in LAYERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    from zoo.backbones.registry import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 10, pretrained=True).to(memory_format=torch.channels_last)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    rows = {"train mode": errors(model.train(), x, y), "eval mode": errors(model.eval(), x, y)}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [m.register_forward_pre_hook(lambda m, args: (args[0].float(),)) for m in norms]
    rows["train mode, BatchNorm in fp32"] = errors(model.train(), x, y)
    for h in hooks:
        h.remove()
    print(f"relative error of bf16 weight gradients against fp32, lite0, batch {args.batch} at {args.size} px")
    print(f"  {'layer':<40}" + "".join(f"{k:>32}" for k in rows))
    for n in LAYERS:
        print(f"  {n:<40}" + "".join(f"{rows[k][n]:>32.3f}" for k in rows))


if __name__ == "__main__":
    main()
