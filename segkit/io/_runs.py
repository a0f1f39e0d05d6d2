"""RLE runs kept as per-line intervals so a window is rasterized without the full-size mask.

For column-major RLE (order F) a "line" is a column and intervals are row ranges; for row-major
(order C) a line is a row. A 20000x20000 mask of HuBMAP-like objects is a few hundred thousand
intervals (~12 bytes each) instead of 400 MB of pixels.
"""

from __future__ import annotations

import numpy as np


def merge_runs(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint, non-touching [start, end) runs covering the union of the input runs."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > reach[:-1]
    last = np.append(np.flatnonzero(new)[1:] - 1, starts.size - 1)
    return starts[new], reach[last]


class LineIntervals:
    """Disjoint runs of a flat pixel order split into per-line [lo, hi) intervals (CSR layout)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, lines: int, line_len: int):
        starts, ends = merge_runs(np.asarray(starts, np.int64), np.asarray(ends, np.int64))
        self.lines, self.line_len = int(lines), int(line_len)
        first, last = starts // line_len, (ends - 1) // line_len
        pieces = last - first + 1
        run = np.repeat(np.arange(starts.size), pieces)
        k = np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        line = first[run] + k
        base = line * line_len
        lo = np.maximum(starts[run] - base, 0)
        hi = np.minimum(ends[run] - base, line_len)
        small = np.int32 if max(lines, line_len) < 2**31 else np.int64
        self.lo, self.hi = lo.astype(small), hi.astype(small)
        # runs are sorted, so intervals are sorted by line then lo: index each line's slice
        self.ptr = np.searchsorted(line, np.arange(self.lines + 1)).astype(np.int64)

    @property
    def nbytes(self) -> int:
        return self.lo.nbytes + self.hi.nbytes + self.ptr.nbytes

    def rasterize(self, l0: int, l1: int, m0: int, m1: int) -> np.ndarray:
        """uint8 0/1 array (l1-l0, m1-m0) of lines l0..l1 and positions m0..m1 within them."""
        return rasterize_intervals(self.ptr, self.lo, self.hi, l0, l1, m0, m1)

    def block_any(self, line_edges: np.ndarray, pos_edges: np.ndarray) -> np.ndarray:
        """bool (len(line_edges)-1, len(pos_edges)-1): does a block contain any run pixel?"""
        nl, nm = line_edges.size - 1, pos_edges.size - 1
        counts = np.diff(self.ptr)
        line = np.repeat(np.arange(self.lines), counts)
        bl = np.searchsorted(line_edges, line, side="right") - 1
        bm0 = np.searchsorted(pos_edges, self.lo, side="right") - 1
        bm1 = np.searchsorted(pos_edges, self.hi - 1, side="right") - 1
        diff = np.zeros((nl, nm + 1), np.int32)
        np.add.at(diff, (bl, bm0), 1)
        np.add.at(diff, (bl, bm1 + 1), -1)
        return np.cumsum(diff, axis=1)[:, :nm] > 0


def rasterize_intervals(ptr: np.ndarray, lo: np.ndarray, hi: np.ndarray, l0: int, l1: int, m0: int, m1: int,
                        values: np.ndarray | None = None) -> np.ndarray:
    """(l1-l0, m1-m0) array of lines l0..l1, positions m0..m1, painted from per-line intervals.

    ``lo``/``hi``: each interval's [start, end) position in its line, sorted by line then lo and
    disjoint; ``ptr[k]``: index of line k's first interval. ``values``: each interval's value
    (int32 object ids, segkit.io.instances), or None for uint8 1 (a mask).
    """
    n_lines, n = l1 - l0, m1 - m0
    a, b = ptr[l0], ptr[l1]
    dtype = np.uint8 if values is None else np.int32
    lo = np.clip(lo[a:b], m0, m1).astype(np.int64) - m0
    hi = np.clip(hi[a:b], m0, m1).astype(np.int64) - m0
    keep = hi > lo
    line = np.repeat(np.arange(n_lines), np.diff(ptr[l0:l1 + 1]))[keep]
    if line.size == 0:
        return np.zeros((n_lines, n), dtype)
    # intervals are sorted and disjoint, so their flat edges are sorted: the output is alternating
    # background / interval segments, written by one np.repeat (a cumulative sum is ~5x slower)
    edges = np.empty(2 * line.size + 2, np.int64)
    edges[0], edges[-1] = 0, n_lines * n
    edges[1:-1:2] = lo[keep] + line * n
    edges[2:-1:2] = hi[keep] + line * n
    painted = np.zeros(edges.size - 1, dtype)
    painted[1::2] = 1 if values is None else values[a:b][keep]
    return np.repeat(painted, np.diff(edges)).reshape(n_lines, n)
