"""Classification losses on (N, C) logits whose targets are class probabilities (N, C).

Hard labels arrive one-hot and MixUp/CutMix targets arrive mixed, so every term here takes
probabilities; create_loss converts (N,) class ids before calling them. Each term supports:

- ``class_weights``: per-class weights (a list of C numbers), the "weighted CE" answer to imbalance
  (``weight`` is the term's weight in the sum of losses);
- ``label_smoothing``: eps; the target becomes (1 - eps) * target + eps / C.

Terms (registered in segkit.models.losses.CLS_LOSSES):
- ``ce``: cross-entropy (torch's own, which accepts probability targets);
- ``focal``: focal loss, Lin et al. 2017, "Focal Loss for Dense Object Detection", ICCV;
  -sum_c w_c t_c (1 - p_c)^gamma log p_c;
- ``asymmetric``: the single-label asymmetric loss of Ridnik et al. 2021, "Asymmetric Loss For
  Multi-Label Classification", ICCV (their ASLSingleLabel): log p_c is down-weighted by
  (1 - p_c)^gamma_pos where the target is on and by p_c^gamma_neg where it is off, with the
  exponent interpolated for fractional (mixed) targets. With single labels the off-target terms
  exist only through label smoothing, hence its default eps = 0.1 there (as in the reference).

Written here rather than taken from a library because smp's focal loss and timm's
SoftTargetCrossEntropy have no per-class weights or smoothing on probability targets, and the
asymmetric loss's reference code ships as a training repository, not a package.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from segkit.ground.errors import SegkitError


def _weights(value, classes: int, name: str):
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value] * classes
    if len(values) != classes:
        raise SegkitError(f"loss.{name}: class_weights needs {classes} values (one per class), got {len(values)}")
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _smoothing(value, name: str) -> float:
    eps = float(value)
    if not 0.0 <= eps < 1.0:
        raise SegkitError(f"loss.{name}: label_smoothing must be in [0, 1), got {eps}")
    return eps


class _ProbabilityLoss(nn.Module):
    """Shared argument handling: classes, per-class weight buffer, label smoothing."""

    name = "loss"

    def __init__(self, classes: int, class_weights=None, label_smoothing: float = 0.0):
        super().__init__()
        if int(classes) < 2:
            raise SegkitError(f"loss.{self.name}: needs classes >= 2 (use bce for a single logit)")
        self.classes = int(classes)
        self.eps = _smoothing(label_smoothing, self.name)
        self.register_buffer("weight", _weights(class_weights, self.classes, self.name), persistent=False)

    def smooth(self, target: torch.Tensor) -> torch.Tensor:
        return target if self.eps == 0 else target * (1.0 - self.eps) + self.eps / self.classes

    def reduce(self, per_class: torch.Tensor) -> torch.Tensor:
        """(N, C) per-class terms -> scalar: class-weighted sum over C, mean over N."""
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.dtype)
        return per_class.sum(dim=1).mean()


class SoftCrossEntropy(_ProbabilityLoss):
    name = "ce"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.eps)


class FocalLoss(_ProbabilityLoss):
    name = "focal"

    def __init__(self, classes: int, gamma: float = 2.0, class_weights=None, label_smoothing: float = 0.0):
        super().__init__(classes, class_weights, label_smoothing)
        if float(gamma) < 0:
            raise SegkitError(f"loss.focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        modulation = (1.0 - log_p.exp()).clamp_min(0.0).pow(self.gamma)
        return self.reduce(-self.smooth(target) * modulation * log_p)


class AsymmetricLoss(_ProbabilityLoss):
    name = "asymmetric"

    def __init__(self, classes: int, gamma_pos: float = 0.0, gamma_neg: float = 4.0, class_weights=None,
                 label_smoothing: float = 0.1):
        super().__init__(classes, class_weights, label_smoothing)
        if float(gamma_pos) < 0 or float(gamma_neg) < 0:
            raise SegkitError(f"loss.asymmetric: gamma_pos and gamma_neg must be >= 0, got {gamma_pos}, {gamma_neg}")
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        p = log_p.exp()
        # base of the focusing weight: 1 - p where the target is on, p where it is off
        base = (1.0 - p * target - (1.0 - p) * (1.0 - target)).clamp_min(0.0)
        exponent = self.gamma_pos * target + self.gamma_neg * (1.0 - target)
        # the focusing weight uses the unsmoothed target; smoothing only moves the target (as in ASLSingleLabel)
        return self.reduce(-self.smooth(target) * base.pow(exponent) * log_p)


def _builder(cls):
    def build(mode, classes, params, task):
        return cls(classes, **params), "soft"
    return build


PROBABILITY_LOSSES = {
    "ce": _builder(SoftCrossEntropy),
    "focal": _builder(FocalLoss),
    "asymmetric": _builder(AsymmetricLoss),
}
