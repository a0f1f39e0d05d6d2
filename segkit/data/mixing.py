"""MixUp and CutMix on classification batches, through timm's ``Mixup`` (installed with smp).

MixUp: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR. CutMix: Yun et
al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV. ``train.mixup`` takes timm's own arguments, e.g.
``{mixup_alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5}``; the targets become
(N, C) class probabilities that every cls loss accepts. Label smoothing stays the loss's job
(its ``label_smoothing``), so timm's is set to 0 here.

timm draws from numpy's global generator; each batch's draw is seeded from (seed, epoch, batch)
and the global state put back afterwards, so a resumed run mixes exactly as the uninterrupted
one and nothing else's randomness moves.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from segkit.ground.errors import SegkitError

MIXUP_KEYS = ("mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam")


class BatchMix:
    """Callable (images NCHW, class ids N) -> (mixed images, target probabilities N x C)."""

    def __init__(self, classes: int, seed: int = 0, **options):
        from timm.data import Mixup

        self.mix = Mixup(label_smoothing=0.0, num_classes=int(classes), **options)
        self.seed = int(seed)
        self.epoch = 0
        self.calls = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.calls = int(epoch), 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        saved = np.random.get_state()
        np.random.seed(np.random.SeedSequence([self.seed, self.epoch, self.calls, 0x3A1]).generate_state(1)[0])
        self.calls += 1
        try:
            return self.mix(images, targets.long())
        finally:
            np.random.set_state(saved)


def create_mixup(spec: Optional[dict], *, classes: int, batch_size: int, seed: int = 0) -> Optional[BatchMix]:
    """BatchMix from the ``train.mixup`` mapping, or None when it is null/empty (the default)."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise SegkitError(f"config key train.mixup: expected a mapping like {{mixup_alpha: 0.2}}, got {spec!r}")
    unknown = sorted(set(spec) - set(MIXUP_KEYS))
    if unknown:
        raise SegkitError(f"config key train.mixup: unknown option(s) {unknown}; valid: {', '.join(MIXUP_KEYS)}")
    if int(classes) < 2:
        raise SegkitError("config key train.mixup: needs a classifier with >= 2 classes")
    if int(batch_size) % 2:
        raise SegkitError(f"config key train.mixup: timm's Mixup needs an even train.batch_size, got {batch_size}")
    try:
        return BatchMix(classes, seed=seed, **spec)
    except (AssertionError, TypeError, ValueError) as exc:
        raise SegkitError(f"config key train.mixup: {exc or type(exc).__name__}") from None
