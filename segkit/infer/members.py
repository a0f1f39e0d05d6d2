"""Where the model is unsure: the ensemble's mean, its entropy and its members' disagreement in one pass.

:class:`UncertaintyPredictor` is a predictor for ``predict_strips`` (same forward loop as the
ensemble, segkit.infer.ensemble.member_outputs): for every tile it returns the weighted mean
probabilities (C channels) followed by two score channels in [0, 1]:

- ``entropy``: the entropy of the mean probability, divided by log(classes) (binary: log 2), high
  where the averaged prediction is close to 0.5 (or flat over the classes);
- ``disagreement``: the mutual information between the prediction and the member (each model x
  TTA view is a member), i.e. entropy of the mean minus the members' mean entropy, normalised the
  same way: high where members disagree even if each is confident. This is BALD (Houlsby et al.,
  "Bayesian Active Learning for Classification and Preference Learning", 2011) with checkpoints
  and test-time views standing in for posterior samples.

The scores are computed per tile before blending, so the strips carry C + 2 channels whatever
the number of members. :class:`ScoreGrid` then sums them on a coarse grid of cells, so the
image's score map costs (H / cell) x (W / cell) numbers, not a full-resolution float image.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from segkit.ground.errors import SegkitError
from segkit.infer.ensemble import EnsemblePredictor, member_outputs

SCORES = ("entropy", "disagreement")
_EPS = 1e-6


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over dim 1 of class probabilities (N, K, H, W) -> (N, H, W), natural log."""
    p = probs.clamp(_EPS, 1.0)
    return -(p * p.log()).sum(dim=1)


def _as_classes(probs: torch.Tensor, activation: str) -> torch.Tensor:
    """Class probabilities over dim 1: a sigmoid output's first channel becomes (1 - p, p)."""
    if activation == "sigmoid":
        p = probs[:, :1]
        return torch.cat([1 - p, p], dim=1)
    return probs


class UncertaintyPredictor(EnsemblePredictor):
    """``predictor(x)`` -> (N, C + 2, H, W): the ensemble mean, then entropy and disagreement.

    Same arguments as EnsemblePredictor (probabilities are averaged; ``average`` must stay
    "probs"). Sigmoid outputs with several channels (instance targets) are scored on the first
    (the body).
    """

    def __init__(self, models, tta="none", *, activation: str = "sigmoid", amp: bool = False):
        if activation not in ("sigmoid", "softmax"):
            raise SegkitError(f"uncertainty: needs probabilities (sigmoid or softmax), got activation {activation!r}")
        super().__init__(models, tta, activation=activation, amp=amp)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean = None
        member_entropy = None
        for out, weight in member_outputs(self.models, x, self.tta, activation=self.activation, amp=self.amp):
            mean = out * weight if mean is None else mean + out * weight
            h = _entropy(_as_classes(out, self.activation)) * weight
            member_entropy = h if member_entropy is None else member_entropy + h
        k = 2 if self.activation == "sigmoid" else mean.shape[1]
        norm = math.log(max(k, 2))
        entropy = _entropy(_as_classes(mean, self.activation)) / norm
        disagreement = (entropy - member_entropy / norm).clamp(min=0.0)
        return torch.cat([mean, entropy[:, None], disagreement[:, None]], dim=1).float()


class ScoreGrid:
    """Sums of per-pixel scores over cells of ``cell_px`` x ``cell_px`` source pixels of a region.

    ``add(row0, strip)`` takes the score channels (S, h, W) of a strip whose first row is
    ``row0`` (within the region); ``mean()`` is (S, rows, cols) of per-cell means (cells at the
    right and bottom edges may be partial: their mean is over the pixels they hold).
    """

    def __init__(self, height: int, width: int, cell_px: int, channels: int = 2):
        if cell_px <= 0:
            raise SegkitError(f"score grid: cell must be a positive number of pixels, got {cell_px}")
        self.height, self.width, self.cell = int(height), int(width), int(cell_px)
        self.shape = (-(-self.height // self.cell), -(-self.width // self.cell))
        self.sums = np.zeros((channels, *self.shape), np.float64)
        self.counts = np.zeros(self.shape, np.float64)
        self._col_starts = np.arange(0, self.width, self.cell)

    def add(self, row0: int, strip: np.ndarray) -> None:
        strip = np.asarray(strip, dtype=np.float64)
        if strip.ndim != 3 or strip.shape[2] != self.width:
            raise SegkitError(f"score grid: strip {strip.shape} does not fit (S, h, {self.width})")
        by_col = np.add.reduceat(strip, self._col_starts, axis=2)  # (S, h, cols)
        cells = (int(row0) + np.arange(strip.shape[1])) // self.cell
        widths = np.diff(np.append(self._col_starts, self.width))
        for channel in range(strip.shape[0]):
            np.add.at(self.sums[channel], cells, by_col[channel])
        np.add.at(self.counts, cells, np.broadcast_to(widths, (strip.shape[1], widths.size)))

    def mean(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1.0)


def score_channels(score: str) -> list[int]:
    """Which of the two score channels a ``label.score`` name averages: entropy, disagreement or both."""
    if score == "both":
        return [0, 1]
    if score not in SCORES:
        raise SegkitError(f"label.score {score!r}: valid: {', '.join(SCORES)}, both")
    return [SCORES.index(score)]
