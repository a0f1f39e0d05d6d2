"""Which regions to label next: candidate squares scored on a coarse grid, picked apart from each other.

Pure numpy on small arrays (one value per grid cell): no image is read here.

- :func:`candidates`: every region_px square on a step of one cell that fits in the image, with
  the mean score of its usable (tissue) cells and its usable share (integral images);
- :func:`pick_apart`: the best-scored candidates, greedily, none overlapping another pick or an
  already labelled region;
- :func:`k_centre`: greedy k-centre over feature vectors (Gonzalez 1985; the "core-set" selection
  of Sener and Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
  ICLR 2018): each next pick is the candidate farthest from everything chosen or labelled so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segkit.ground.geometry import Window


@dataclass(frozen=True)
class Candidate:
    """One square region of one image: its window (source px), score and usable share."""

    image: int
    window: Window
    score: float
    usable: float


def _block_sums(grid: np.ndarray, k: int) -> np.ndarray:
    """Sums over every k x k block of a 2-D grid (top-left at each cell that leaves room)."""
    table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(grid, axis=0), axis=1)
    return table[k:, k:] - table[:-k, k:] - table[k:, :-k] + table[:-k, :-k]


def candidates(scores: np.ndarray, usable: np.ndarray, *, image: int, cell_px: int, region_px: int,
               height: int, width: int, min_usable: float) -> list[Candidate]:
    """Squares of ``region_px`` whose top-left lies on the grid of ``cell_px`` cells and that fit in
    the (height x width) image; score = mean of ``scores`` over the square's cells weighted by
    ``usable`` (share of each cell that is tissue, in [0, 1]); squares with a usable share below
    ``min_usable`` are left out."""
    k = max(1, int(round(region_px / cell_px)))
    if scores.shape[0] < k or scores.shape[1] < k:
        return []
    usable = np.asarray(usable, np.float64)
    weighted = _block_sums(np.asarray(scores, np.float64) * usable, k)
    share = _block_sums(usable, k) / (k * k)
    mean = weighted / np.maximum(share * k * k, 1e-9)
    last_row, last_col = (height - region_px) // cell_px, (width - region_px) // cell_px
    out = []
    for r in range(min(last_row, mean.shape[0] - 1) + 1):
        for c in range(min(last_col, mean.shape[1] - 1) + 1):
            if share[r, c] >= min_usable and share[r, c] > 0:
                out.append(Candidate(image, Window(r * cell_px, c * cell_px, region_px, region_px),
                                     float(mean[r, c]), float(share[r, c])))
    return out


def overlaps(a: Window, b: Window) -> bool:
    return a.row < b.bottom and b.row < a.bottom and a.col < b.right and b.col < a.right


def pick_apart(pool: list[Candidate], count: int, taken: dict[int, list[Window]]) -> list[Candidate]:
    """Up to ``count`` candidates, best score first, none overlapping each other or ``taken``
    (image index -> labelled windows). Ties keep the pool's order (deterministic)."""
    order = sorted(range(len(pool)), key=lambda i: -pool[i].score)
    chosen: list[Candidate] = []
    blocked = {image: list(windows) for image, windows in taken.items()}
    for i in order:
        cand = pool[i]
        if any(overlaps(cand.window, w) for w in blocked.get(cand.image, [])):
            continue
        chosen.append(cand)
        blocked.setdefault(cand.image, []).append(cand.window)
        if len(chosen) == count:
            break
    return chosen


def k_centre(features: np.ndarray, count: int, *, first: int = 0, centres: np.ndarray | None = None) -> list[int]:
    """Indices of ``count`` rows of ``features`` (N, D) chosen by greedy k-centre (farthest first).

    Starts from ``centres`` (M, D; e.g. the labelled regions' features) when given, else from row
    ``first`` (e.g. the best-scored candidate); Euclidean distances.
    """
    feats = np.asarray(features, np.float64)
    count = min(int(count), len(feats))
    if count <= 0:
        return []
    nearest = np.full(len(feats), np.inf)
    chosen: list[int] = []
    if centres is not None and len(centres):
        for centre in np.asarray(centres, np.float64):
            nearest = np.minimum(nearest, np.linalg.norm(feats - centre, axis=1))
    else:
        chosen.append(int(first))
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[first], axis=1))
    while len(chosen) < count:
        nearest[chosen] = -np.inf
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[nxt], axis=1))
    return chosen
