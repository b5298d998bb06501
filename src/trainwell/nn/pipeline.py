"""The saved model: fitted preprocessing followed by the network.

Keeping the preprocessing inside the module means evaluate and predict apply exactly the
statistics fitted on the training split, and one safetensors file holds both.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """logits = net(preprocess(x)).

    Shape: x (N, *input_shape) float32 (images already scaled to [0, 1]) -> (N, num_classes).
    """

    def __init__(self, net: nn.Module, preprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
