"""Training's view of zoo.metrics: the same report, from the logits a PyTorch model returns."""
from __future__ import annotations

from typing import Any

import torch

from zoo.metrics import classification_report as report_from_probabilities
from zoo.metrics import softmax


def classification_report(logits: torch.Tensor, y_true: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """zoo.metrics.classification_report on softmax(logits), computed in float64."""
    return report_from_probabilities(softmax(logits.detach().float().cpu().numpy()), y_true.cpu().numpy(), classes)
