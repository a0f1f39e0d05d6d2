"""Loss of instance targets: the mask loss applied to each target channel alone, weighted.

Each target (body, border, contact: segkit.data.targets) is its own binary problem with its own
sigmoid output, so each channel gets train.loss as a binary loss (a Dice over all channels at
once would let the large body channel drown the thin border and contact ones), times its weight
from train.target_weights.
"""

from __future__ import annotations

import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.models.losses import create_loss


class TargetLoss(nn.Module):
    """sum_t weight_t * loss(logits[:, t], target[:, t]) over (N, T, H, W) logits and 0/1 targets;
    ``last`` holds each term as <target>_<term>."""

    def __init__(self, terms, names, weights=None):
        super().__init__()
        self.names = list(names)
        weights = [1.0] * len(self.names) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.names):
            raise SegkitError(f"config key train.target_weights: {len(weights)} weights for {len(self.names)} "
                              f"targets ({', '.join(self.names)})")
        self.weights = weights
        self.losses = nn.ModuleList([create_loss(terms, classes=1) for _ in self.names])
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != logits.shape:
            raise ValueError(f"TargetLoss: targets {tuple(target.shape)} do not match logits {tuple(logits.shape)}")
        total = logits.new_zeros((), dtype=torch.float32)
        self.last = {}
        for t, (name, weight, loss) in enumerate(zip(self.names, self.weights, self.losses)):
            value = loss(logits[:, t:t + 1], target[:, t:t + 1])
            self.last.update({f"{name}_{term}": v for term, v in loss.last.items()})
            total = total + weight * value
        return total
