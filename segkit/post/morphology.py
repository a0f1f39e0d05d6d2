"""Post-processing of predicted masks: threshold, removal of small objects, hole filling.

The functions act on one array (a whole small image or one strip). On a huge image the mask
arrives as row strips, and an object or a hole can cross a strip boundary; cutting it there
would change the result (a large object looks small in each strip). :class:`StripPostProcessor`
makes strip-wise processing exact: it delays the stream by a margin of rows so every row is
processed with enough rows of context above and below (see its docstring for the bound).

Connectivity: objects are 4-connected by default (as skimage's ``remove_small_objects`` and
GDAL's polygonize, so the polygons written later are the same objects); holes are 4-connected
background regions (as ``scipy.ndimage.binary_fill_holes``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

__all__ = ["threshold", "remove_small_objects", "fill_holes", "StripPostProcessor", "RowContextStream"]


def threshold(probs: np.ndarray, thresholds: float | Sequence[float] = 0.5, *,
              background_channel: bool = True) -> np.ndarray:
    """Class-id mask (uint8, (h, w)) from probabilities (C, h, w).

    - C == 1: class 1 where ``probs[0] >= thr``, else 0.
    - C > 1, ``background_channel=True`` (softmax output, channel 0 = background): the argmax
      class, set back to 0 where its probability is below that class's threshold.
    - C > 1, ``background_channel=False`` (sigmoid, multi-label, no background channel):
      channel k is class k + 1; a pixel takes the most probable class among the channels that
      pass their threshold, 0 when none does.

    ``thresholds`` is one float or one value per foreground class (C - 1 values with a
    background channel, else C; a list of C values is also taken with the background's ignored).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"threshold: expected probs (C, h, w), got shape {probs.shape}")
    n = probs.shape[0]
    fg = n - 1 if (n > 1 and background_channel) else n
    thr = np.asarray(thresholds, dtype=np.float32).ravel()
    if thr.size == 1:
        thr = np.repeat(thr, fg)
    elif thr.size == n and fg == n - 1:
        thr = thr[1:]
    if thr.size != fg:
        raise ValueError(f"threshold: {thr.size} thresholds for {fg} foreground classes")
    if n == 1:
        return (probs[0] >= thr[0]).astype(np.uint8)
    if background_channel:
        cls = np.argmax(probs, axis=0).astype(np.uint8)
        best = np.take_along_axis(probs, cls[None].astype(np.intp), axis=0)[0]
        full_thr = np.concatenate([[-np.inf], thr]).astype(np.float32)
        cls[best < full_thr[cls]] = 0
        return cls
    passing = np.where(probs >= thr[:, None, None], probs, -np.inf)
    cls = (np.argmax(passing, axis=0) + 1).astype(np.uint8)
    cls[~np.isfinite(np.max(passing, axis=0))] = 0
    return cls


def _components(binary: np.ndarray, connectivity: int):
    return cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)


def _touching_rows(labels: np.ndarray, top: bool, bottom: bool) -> np.ndarray:
    """Labels present in the first / last row (components that may continue past a cut)."""
    rows = [labels[0]] if top else []
    if bottom:
        rows.append(labels[-1])
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int32)


def remove_small_objects(mask: np.ndarray, min_px: int, *, connectivity: int = 4,
                         _open_top: bool = False, _open_bottom: bool = False) -> np.ndarray:
    """Set objects (per class) with fewer than ``min_px`` pixels to 0; returns a new mask.

    ``_open_top``/``_open_bottom`` (used by :class:`StripPostProcessor`) keep objects that touch
    that edge, because they may continue in rows not seen here.
    """
    mask = np.asarray(mask)
    out = mask.copy()
    if min_px <= 1 or not mask.any():
        return out
    for cls in np.unique(mask):
        if cls == 0:
            continue
        n, labels, stats, _ = _components(mask == cls, connectivity)
        small = stats[:, cv2.CC_STAT_AREA] < min_px
        small[0] = False
        small[_touching_rows(labels, _open_top, _open_bottom)] = False
        if small.any():
            out[small[labels]] = 0
    return out


def fill_holes(mask: np.ndarray, max_hole_px: int | None = None) -> np.ndarray:
    """Fill background regions enclosed by one class with that class; returns a new mask.

    A hole is a 4-connected region of 0 that does not touch the image border and whose
    neighbouring pixels all belong to one class (a background region bordered by two classes
    is left alone). ``max_hole_px``: only holes with at most that many pixels are filled
    (None: all). For a binary mask this equals ``scipy.ndimage.binary_fill_holes``.
    """
    mask = np.asarray(mask)
    out = mask.copy()
    if not mask.any() or mask.all():
        return out
    n, labels, stats, _ = _components(mask == 0, 4)
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    candidate = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    candidate[0] = False  # label 0 = the foreground pixels
    # (on a strip with context, a region reaching the cut top/bottom row is excluded by this
    # border rule too: it may continue outside, and StripPostProcessor's margin makes it large)
    if max_hole_px is not None:
        candidate &= stats[:, cv2.CC_STAT_AREA] <= max_hole_px
    if not candidate.any():
        return out
    # classes next to each candidate region: pairs (region label, neighbour class) over the 4
    # neighbour directions; a region is filled when it has exactly one neighbour class
    pairs = []
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        for src, dst in ((a, b), (b, a)):
            lab, nb = labels[src], mask[dst]
            sel = candidate[lab] & (nb != 0)
            pairs.append(lab[sel].astype(np.int64) * 256 + nb[sel])
    pairs = np.unique(np.concatenate(pairs))
    region, cls = pairs // 256, pairs % 256
    counts = np.bincount(region, minlength=n)
    fill_cls = np.zeros(n, dtype=mask.dtype)
    single = counts[region] == 1
    fill_cls[region[single]] = cls[single]
    hole = fill_cls[labels]
    sel = hole != 0
    out[sel] = hole[sel]
    return out


class RowContextStream:
    """Delay a stream of row strips by ``margin`` rows so each row is processed with context.

    ``process(arrays, open_top, open_bottom, out_start, out_stop)`` gets the context rows (each
    array sliced on axis -2) and returns the processed arrays for the rows
    ``[out_start, out_stop)`` of that context. ``open_top``/``open_bottom`` tell whether the
    context was cut (more image rows exist beyond it). Only ``~ margin + strip`` rows are held.
    """

    def __init__(self, height: int, margin: int, process):
        self.height, self.margin, self.process = int(height), max(0, int(margin)), process
        self._buf: list[np.ndarray] | None = None
        self._buf_row0 = 0
        self._received = 0
        self._emitted = 0

    def push(self, row0: int, *arrays: np.ndarray) -> list[tuple]:
        """Add the strip starting at ``row0``; returns finished ``(row0, *arrays)`` strips."""
        if row0 != self._received:
            raise ValueError(f"strips must arrive in row order: expected row {self._received}, got {row0}")
        rows = arrays[0].shape[-2]
        if self._received + rows > self.height:
            raise ValueError(f"strip rows {row0}+{rows} exceed height {self.height}")
        if self._buf is None:
            self._buf = [np.asarray(a) for a in arrays]
        else:
            self._buf = [np.concatenate([b, a], axis=-2) for b, a in zip(self._buf, arrays)]
        self._received += rows
        ready = self.height if self._received == self.height else self._received - self.margin
        if ready <= self._emitted:
            return []
        start = max(0, self._emitted - self.margin)
        ctx = [b[..., start - self._buf_row0:, :] for b in self._buf]
        out = self.process(ctx, start > 0, self._received < self.height,
                           self._emitted - start, ready - start)
        result = [(self._emitted, *out)]
        self._emitted = ready
        keep = max(0, ready - self.margin)
        self._buf = [b[..., keep - self._buf_row0:, :] for b in self._buf]
        self._buf_row0 = keep
        return result

    def finish(self) -> list[tuple]:
        if self._received != self.height:
            raise ValueError(f"got {self._received} rows, image height is {self.height}")
        return []

    def __call__(self, strips: Iterable[tuple]) -> Iterator[tuple]:
        for row0, *arrays in strips:
            yield from self.push(row0, *arrays)
        yield from self.finish()


class StripPostProcessor:
    """remove_small_objects then fill_holes on a mask arriving as row strips, exactly.

    Exactness: an object with fewer than ``min_px`` pixels spans at most ``min_px - 1`` rows, so
    with that many rows of context above and below, an object that reaches the cut edge of the
    context is large and kept, and any other object is seen whole. The same holds for holes of
    at most ``max_hole_px`` pixels (margin ``max_hole_px`` rows). Hence the result equals
    ``fill_holes(remove_small_objects(full_mask, min_px), max_hole_px)``. Unbounded hole filling
    cannot stream (a hole's border may be any distance below), so ``max_hole_px`` is required
    here when filling. Memory: about (margin + strip) rows of the mask (uint8) and of ``extra``.

    ``push(row0, mask, extra=None)`` returns finished ``(row0, mask[, extra])`` strips, delayed
    by the margin; ``extra`` (e.g. the probabilities, rows on axis -2) is delayed alongside so
    it stays aligned with the mask. ``finish()`` checks that the whole height arrived.
    """

    def __init__(self, height: int, width: int, *, min_px: int = 0, max_hole_px: int | None = None,
                 fill: bool = False, connectivity: int = 4):
        if fill and max_hole_px is None:
            raise ValueError("StripPostProcessor: hole filling on strips needs max_hole_px (holes of any size cannot stream)")
        self.height, self.width = int(height), int(width)
        self.min_px, self.connectivity = int(min_px), connectivity
        self.max_hole_px = int(max_hole_px) if fill else None
        self._stages = []
        if self.min_px > 1:
            self._stages.append(RowContextStream(height, self.min_px - 1, self._remove))
        if self.max_hole_px is not None:
            self._stages.append(RowContextStream(height, self.max_hole_px, self._fill))

    def _remove(self, ctx, top, bottom, a, b):
        mask = remove_small_objects(ctx[0], self.min_px, connectivity=self.connectivity,
                                    _open_top=top, _open_bottom=bottom)
        return [mask[a:b]] + [x[..., a:b, :] for x in ctx[1:]]

    def _fill(self, ctx, top, bottom, a, b):
        mask = fill_holes(ctx[0], self.max_hole_px)  # context edges count as border: see fill_holes
        return [mask[a:b]] + [x[..., a:b, :] for x in ctx[1:]]

    def push(self, row0: int, mask: np.ndarray, extra: np.ndarray | None = None) -> list[tuple]:
        items = [(row0, mask) if extra is None else (row0, mask, extra)]
        for stage in self._stages:
            items = [out for item in items for out in stage.push(*item)]
        return items

    def finish(self) -> list[tuple]:
        for stage in self._stages:
            stage.finish()
        return []

    def __call__(self, strips: Iterable[tuple]) -> Iterator[tuple]:
        for item in strips:
            yield from self.push(*item)
        yield from self.finish()
