"""Tile gating for seg+cls models (``infer.cls_gate``): tiles the classification head calls empty are
not segmented.

For each batch the ensemble's tile-class probabilities are computed first from the encoder and
the classification head alone (every model under every TTA view, averaged with the ensemble's
weights). A tile whose "empty" probability (class 0) is >= the gate is written as background:
the predictor runs the decoders only on the other tiles, and predict_strips does not blend the
gated ones (their pixels stay 0 unless a kept tile covers them), so a mostly empty slide costs
little more than its encoder passes. The 1st place of the HuBMAP kidney contest zeroed empty
tiles this way. Where no tile of a pixel was gated the output equals the ungated one.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.tta import augment
from segkit.runs.device import autocast


def head_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 2) tile-class logits of an smp model with a classification head, without running its decoder."""
    head = getattr(model, "classification_head", None)
    if head is None:
        raise SegkitError("infer.cls_gate: the run's model has no classification head (train it with --task seg+cls)")
    return head(model.encoder(x)[-1])


class GatedPredictor:
    """``predictor(x) -> (probs NCHW, kept N bool)``: the EnsemblePredictor's probabilities on the tiles
    whose ensemble "empty" probability is below ``gate``, zeros on the others.

    ``gated`` and ``tiles`` count the tiles seen, for the log and the benchmark.
    """

    def __init__(self, models: Sequence[tuple[nn.Module, float]], tta="none", *, gate: float, classes: int,
                 activation: str = "sigmoid", amp: bool = False):
        if not 0 < float(gate) <= 1:
            raise SegkitError(f"infer.cls_gate: must be in (0, 1], got {gate}")
        self.inner = EnsemblePredictor(models, tta, activation=activation, amp=amp)
        self.gate, self.classes, self.amp = float(gate), int(classes), bool(amp)
        self.gated = self.tiles = 0

    def empty_probability(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) weighted mean over models x views of the softmax probability of class 0 ("empty")."""
        total = torch.zeros(x.shape[0], device=x.device)
        with torch.inference_mode(), autocast(x.device, self.amp):
            for model, m_weight in self.inner.models:
                for view, v_weight in self.inner.tta:
                    probs = torch.softmax(head_logits(model, augment(x, view)).float(), dim=1)
                    total += probs[:, 0] * (m_weight * v_weight)
        return total

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = self.empty_probability(x) < self.gate
        self.tiles += int(x.shape[0])
        self.gated += int((~kept).sum())
        probs = torch.zeros((x.shape[0], self.classes, x.shape[2], x.shape[3]), dtype=torch.float32, device=x.device)
        if bool(kept.any()):
            probs[kept] = self.inner(x[kept])
        return probs, kept

    @contextlib.contextmanager
    def prepared(self, device: torch.device) -> Iterator["GatedPredictor"]:
        with self.inner.prepared(device):
            yield self
