"""Blend weights and the strip accumulator of the streaming predictor.

The tile grid itself is segkit.data.windows.grid_windows / grid_starts (even step placement, the
last tile ends at the border). Overlapping tile predictions are blended as
sum(weight * probs) / sum(weight); the accumulator keeps those two sums only for the rows that
can still receive tiles, so memory is about one strip of tiles whatever the image height.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window

BLEND_MODES = ("gaussian", "pyramid", "flat")
# gaussian weights at a tile's corners are ~exp(-32) of the centre; the floor keeps every weight
# strictly positive (and well above float32 underflow) so no covered pixel is ever divided by 0
_GAUSSIAN_FLOOR = 1e-4
# the weight sums start here instead of 0, so that normalising needs no test for uncovered pixels (their
# weighted sum is 0, and 0 / tiny = 0); added to a blend weight (>= 1e-4) it changes no float32 bit
_TINY = 1e-30


def _gaussian_1d(n: int) -> np.ndarray:
    sigma = max(n / 8.0, 1e-3)
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    return np.exp(-0.5 * (x / sigma) ** 2)


def blend_weights(height: int, width: int, mode: str = "gaussian") -> np.ndarray:
    """float32 (height, width) weights, strictly > 0, symmetric under flips.

    gaussian: sigma = size / 8 per axis, peak 1, floored at 1e-4; pyramid: distance to the nearest
    tile edge + 1 (1 on the border); flat: all ones.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise SegkitError(f"blend weights: tile size must be positive, got {height}x{width}")
    if mode == "flat":
        return np.ones((height, width), dtype=np.float32)
    if mode == "gaussian":
        w = np.outer(_gaussian_1d(height), _gaussian_1d(width))
        w /= w.max()
        return np.maximum(w, _GAUSSIAN_FLOOR).astype(np.float32)
    if mode == "pyramid":
        r = np.arange(height)
        c = np.arange(width)
        dr = np.minimum(r, height - 1 - r)
        dc = np.minimum(c, width - 1 - c)
        return (np.minimum.outer(dr, dc) + 1).astype(np.float32)
    raise SegkitError(f"blend: unknown mode {mode!r}; valid: {', '.join(BLEND_MODES)}")


class StripAccumulator:
    """Weighted sums of tile probabilities for the rows still in flight, kept on ``device``.

    Tiles are added in grid order (row-major, tile rows non-decreasing). When a tile starts a new
    tile row at row r, no later tile can touch rows above r, so they are final: add() normalises
    them and returns them as (row0, probs (C, h, width)) strips. finish() returns the rest.
    Windows are in the accumulator's own coordinates (0..height, 0..width) and may extend past
    them: only the inside part is accumulated. Strips hold at most max_strip_values floats
    (rows = max_strip_values // (channels * width), at least 1), so on very wide images the
    output and its temporaries stay small; add_iter/finish_iter produce them one at a time.

    Tiles and weights may be numpy arrays or torch tensors; the sums live on ``device`` (the
    model's), so a GPU predictor blends without waiting on the host, and each finished strip is
    copied to the host once, as a float32 numpy array.

    .. versionchanged:: the sums are torch tensors on ``device`` (numpy before).
    """

    def __init__(self, channels: int, height: int, width: int, max_strip_values: int = 1 << 23,
                 device: torch.device | str = "cpu"):
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        self.max_rows = max(1, int(max_strip_values) // max(1, self.channels * self.width))
        self.device = torch.device(device)
        self.top = 0  # first row not yet handed out
        self._row: int | None = None  # start row of the current tile row (may be < 0: padded tiles)
        self._held = 0  # rows [top, top + held) are in the buffers
        # buffers are reused: flushed rows are shifted out in place, capacity grows only when a
        # taller tile row arrives, so the steady state allocates nothing but the output strips
        self._sums = torch.zeros((self.channels, 0, self.width), dtype=torch.float32, device=self.device)
        self._weights = torch.full((0, self.width), _TINY, dtype=torch.float32, device=self.device)

    @property
    def rows_held(self) -> int:
        return self._held

    def add(self, window: Window, probs, weights) -> list[tuple[int, np.ndarray]]:
        """Blend probs (C, window.height, window.width) with weights (h, w); return strips now final."""
        return list(self.add_iter(window, probs, weights))

    def add_iter(self, window: Window, probs, weights) -> Iterator[tuple[int, np.ndarray]]:
        """add() as a generator: yields the final strips one by one, then blends the tile.

        It must be run to the end (e.g. ``yield from``), or the tile is not added.
        """
        if tuple(probs.shape) != (self.channels, window.height, window.width) or \
                tuple(weights.shape) != tuple(probs.shape[1:]):
            raise ValueError(f"tile {tuple(window)}: probs {tuple(probs.shape)} / weights {tuple(weights.shape)} "
                             "do not match")
        if self._row is not None and window.row < self._row:
            raise ValueError(f"tile {tuple(window)} added after tile row {self._row}: tiles must come row-major")
        if self._row is None or window.row > self._row:
            yield from self.flush_iter(window.row)
        self._row = window.row
        r0, r1 = max(window.row, self.top), min(window.bottom, self.height)
        c0, c1 = max(window.col, 0), min(window.right, self.width)
        if r1 <= r0 or c1 <= c0:
            return
        probs = torch.as_tensor(probs, device=self.device)
        weights = torch.as_tensor(weights, device=self.device)
        self._grow(r1)
        tr, tc = slice(r0 - window.row, r1 - window.row), slice(c0 - window.col, c1 - window.col)
        w = weights[tr, tc]
        br = slice(r0 - self.top, r1 - self.top)
        self._sums[:, br, c0:c1].addcmul_(probs[:, tr, tc], w)  # in place: no temporary tile
        self._weights[br, c0:c1] += w

    def _grow(self, bottom: int) -> None:
        need = bottom - self.top
        if need > self._weights.shape[0]:
            sums = torch.zeros((self.channels, need, self.width), dtype=torch.float32, device=self.device)
            weights = torch.full((need, self.width), _TINY, dtype=torch.float32, device=self.device)
            sums[:, :self._held] = self._sums[:, :self._held]
            weights[:self._held] = self._weights[:self._held]
            self._sums, self._weights = sums, weights
        self._held = max(self._held, need)

    def flush(self, row: int) -> list[tuple[int, np.ndarray]]:
        """Normalise and hand out rows [top, row); pixels no tile covered are 0."""
        return list(self.flush_iter(row))

    def flush_iter(self, row: int) -> Iterator[tuple[int, np.ndarray]]:
        """flush() as a generator of strips of at most max_rows rows (run it to the end)."""
        row = min(int(row), self.height)
        if row <= self.top:
            return
        self._grow(row)
        n = row - self.top
        for a in range(0, n, self.max_rows):
            b = min(a + self.max_rows, n)
            sums, weights = self._sums[:, a:b], self._weights[a:b]
            strip = sums / weights  # weights start at _TINY: an uncovered pixel gives 0 / tiny = 0
            yield self.top + a, strip.cpu().numpy()  # the strip's one copy to the host
        rest = self._held - n  # rows still in flight move to the top of the buffers
        if rest:
            moved_sums, moved_weights = self._sums[:, n:self._held], self._weights[n:self._held]
            if rest > n:  # source and destination overlap
                moved_sums, moved_weights = moved_sums.clone(), moved_weights.clone()
            self._sums[:, :rest] = moved_sums
            self._weights[:rest] = moved_weights
        self._sums[:, rest:self._held] = 0
        self._weights[rest:self._held] = _TINY
        self._held = rest
        self.top = row

    def finish(self) -> list[tuple[int, np.ndarray]]:
        return self.flush(self.height)

    def finish_iter(self) -> Iterator[tuple[int, np.ndarray]]:
        return self.flush_iter(self.height)
