"""Which activation turns a run's logits into probabilities: the one rule every path calls."""

from __future__ import annotations

from typing import Optional, Sequence


def output_activation(classes: int, targets: Optional[Sequence[str]] = None) -> str:
    """``"sigmoid"`` per channel, or ``"softmax"`` across channels.

    A binary model (one output) and a model with instance targets (body, border, contact: maps
    that overlap, each its own yes/no) end in a sigmoid per channel; a multiclass model's
    channels are exclusive classes, so they end in a softmax across them.
    """
    if targets or int(classes) == 1:
        return "sigmoid"
    return "softmax"
