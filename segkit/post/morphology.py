"""Post-processing of predicted masks: threshold, removal of small objects, hole filling.

The functions act on one array (a whole small image or one strip). On a huge image the mask
arrives as row strips, and an object or a hole can cross a strip boundary; cutting it there
would change the result (a large object looks small in each strip). :class:`StripPostProcessor`
makes strip-wise processing exact: it follows objects and holes across strips and hands rows on
once everything in them is decided (equal to the full-image functions, tested).

Connectivity: objects are 4-connected by default (as skimage's ``remove_small_objects`` and
GDAL's polygonize, so the polygons written later are the same objects); holes are 4-connected
background regions (as ``scipy.ndimage.binary_fill_holes``).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

__all__ = ["threshold", "remove_small_objects", "fill_holes", "StripPostProcessor"]


def threshold(probs: np.ndarray, thresholds: float | Sequence[float] | None = None, *,
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
    None (default): 0.5 for sigmoid outputs, plain argmax (threshold 0) for softmax ones.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"threshold: expected probs (C, h, w), got shape {probs.shape}")
    n = probs.shape[0]
    fg = n - 1 if (n > 1 and background_channel) else n
    if thresholds is None:
        thresholds = 0.0 if (n > 1 and background_channel) else 0.5
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


def _merge_classes(a, b):
    """Neighbour-class summaries: 0 = none yet, k = only class k, -1 = several classes."""
    return np.where(a == b, a, np.where(a == 0, b, np.where(b == 0, a, -1)))


def _neighbour_classes(labels: np.ndarray, mask: np.ndarray, n: int, wanted: np.ndarray | None = None) -> np.ndarray:
    """Per label of a background labelling: the one class next to it (4 directions), 0, or -1."""
    present = np.unique(mask)
    present = present[present != 0]
    out = np.zeros(n, np.int64)
    if present.size == 1:
        # one class in the array: every background region that is not the whole array touches
        # it (a region with no foreground neighbour is closed under adjacency), so no pair scan
        out[1:] = int(present[0])
        if wanted is not None:
            out[~wanted] = 0
        return out
    found = []
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        for src, dst in ((a, b), (b, a)):
            lab, nb = labels[src], mask[dst]
            sel = (lab > 0) & (nb != 0)
            if wanted is not None:
                sel &= wanted[lab]
            found.append(np.unique(lab[sel].astype(np.int64) * 256 + nb[sel]))  # shrink per direction
    pairs = np.unique(np.concatenate(found))
    region, cls = pairs // 256, pairs % 256
    counts = np.bincount(region, minlength=n)
    out[region] = np.where(counts[region] == 1, cls, -1)
    return out


def remove_small_objects(mask: np.ndarray, min_px: int, *, connectivity: int = 4) -> np.ndarray:
    """Set objects (per class) with fewer than ``min_px`` pixels to 0; returns a new mask."""
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
    if max_hole_px is not None:
        candidate &= stats[:, cv2.CC_STAT_AREA] <= max_hole_px
    if not candidate.any():
        return out
    fill_cls = np.maximum(_neighbour_classes(labels, mask, n, candidate), 0).astype(mask.dtype)
    hole = fill_cls[labels]
    sel = hole != 0
    out[sel] = hole[sel]
    return out


def find_root(parent: np.ndarray, i: int) -> int:
    """Union-find over the ``parent`` array of the strip processors (components followed across
    seams): the root of ``i``, halving the path on the way (``parent`` is updated in place)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def all_roots(parent: np.ndarray) -> np.ndarray:
    """The root of every id of a union-find ``parent`` array, by pointer jumping (vectorised)."""
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt


class _ComponentStream:
    """One exact streaming pass: remove small objects ("small") or fill holes ("holes").

    Components are labelled per strip and joined across seams with a union-find over global
    ids that carries each component's area, whether it touches the image border and (holes)
    its neighbour classes. A component is decided as soon as the answer cannot change (an
    object already has ``min_px`` pixels; a background region touches the border or two
    classes) or when it is closed (absent from the last row received). Rows are emitted once
    every component in them is decided, so the delay adapts to the objects actually present.
    Ids of emitted rows are dropped (compacted) after every strip.
    """

    def __init__(self, height: int, width: int, kind: str, *, min_px: int = 0,
                 max_hole_px: int | None = None, connectivity: int = 4):
        self.height, self.width, self.kind = int(height), int(width), kind
        self.min_px, self.connectivity = int(min_px), connectivity
        self.max_hole_px = np.inf if max_hole_px is None else int(max_hole_px)
        self.received = self.emitted = 0
        self._buf: list[list[np.ndarray]] = []    # chunks of [mask, gids, *extra], rows on axis -2
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (mask row, gid row) last received
        self._parent = np.zeros(1, np.int32)       # id 0 = no component; int32 ids: 4 B per held pixel
        self._area = np.zeros(1, np.int64)
        self._border = np.zeros(1, bool)
        self._cls = np.zeros(1, np.int64)          # small: its class; holes: neighbour classes

    def _label(self, mask: np.ndarray, row0: int):
        h, w = mask.shape
        if self.kind == "small":
            labels = np.zeros(mask.shape, np.int32)
            areas, classes, offset = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], 0
            for cls in np.unique(mask):
                if cls == 0:
                    continue
                n, lab, stats, _ = _components(mask == cls, self.connectivity)
                sel = lab > 0
                labels[sel] = lab[sel] + offset
                areas.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
                classes.append(np.full(n - 1, int(cls), np.int64))
                offset += n - 1
            area, cls = np.concatenate(areas), np.concatenate(classes)
            return labels, area, np.zeros(area.size, bool), cls
        n, labels, stats, _ = _components(mask == 0, 4)
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        border = (x == 0) | (x + stats[:, cv2.CC_STAT_WIDTH] == w)
        if row0 == 0:
            border |= y == 0
        if row0 + h == self.height:
            border |= y + stats[:, cv2.CC_STAT_HEIGHT] == h
        border[0] = False
        return labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64), border, \
            _neighbour_classes(labels, mask, n)

    def _find(self, i: int) -> int:
        return find_root(self._parent, i)

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        ra, rb = min(ra, rb), max(ra, rb)
        self._parent[rb] = ra
        self._area[ra] += self._area[rb]
        self._border[ra] |= self._border[rb]
        self._cls[ra] = _merge_classes(self._cls[ra], self._cls[rb])

    def _join_seam(self, last_mask, last_gid, mask0, gid0) -> None:
        if self.kind == "small":
            pairs = [(last_gid, gid0, (last_mask == mask0) & (mask0 != 0))]
            if self.connectivity == 8:   # diagonal neighbours across the seam
                pairs += [(last_gid[:-1], gid0[1:], (last_mask[:-1] == mask0[1:]) & (mask0[1:] != 0)),
                          (last_gid[1:], gid0[:-1], (last_mask[1:] == mask0[:-1]) & (mask0[:-1] != 0))]
        else:
            pairs = [(last_gid, gid0, (last_mask == 0) & (mask0 == 0))]
            # classes seen across the seam: background above a class pixel and the reverse
            for gids, classes in ((last_gid, mask0), (gid0, last_mask)):
                sel = (gids > 0) & (classes != 0)
                for g, c in np.unique(np.stack([gids[sel], classes[sel].astype(np.int64)]), axis=1).T.tolist():
                    r = self._find(g)
                    self._cls[r] = _merge_classes(self._cls[r], c)
        for a, b, sel in pairs:
            for x, y in np.unique(np.stack([a[sel], b[sel]]), axis=1).T.tolist():
                self._union(x, y)

    def _roots(self) -> np.ndarray:
        return all_roots(self._parent)

    def push(self, row0: int, mask: np.ndarray, *extra: np.ndarray) -> list[tuple]:
        if row0 != self.received:
            raise ValueError(f"strips must arrive in row order: expected row {self.received}, got {row0}")
        mask = np.asarray(mask)
        h = mask.shape[0]
        if mask.ndim != 2 or mask.shape[1] != self.width or row0 + h > self.height:
            raise ValueError(f"strip {mask.shape} at row {row0} does not fit the {self.height}x{self.width} image")
        if h == 0:
            return []
        labels, area, border, cls = self._label(mask, row0)
        base = self._parent.size - 1
        gids = np.where(labels > 0, labels + np.int32(base), np.int32(0))
        self._parent = np.concatenate([self._parent, np.arange(base + 1, base + area.size, dtype=np.int32)])
        self._area = np.concatenate([self._area, area[1:]])
        self._border = np.concatenate([self._border, border[1:]])
        self._cls = np.concatenate([self._cls, cls[1:]])
        if self._last is not None:
            self._join_seam(*self._last, mask[0], gids[0])
        self.received += h
        self._last = (mask[-1].copy(), gids[-1].copy())
        roots = self._roots()
        closed = np.ones(roots.size, bool)
        if self.received < self.height:
            closed[roots[gids[-1]]] = False
        if self.kind == "small":
            apply = closed & (self._area < self.min_px)
            decided = closed | (self._area >= self.min_px)
        else:
            # border contact, two neighbour classes and a too large area never go away
            hopeless = self._border | (self._cls < 0) | (self._area > self.max_hole_px)
            apply = closed & ~hopeless & (self._cls > 0)
            decided = closed | hopeless
        self._buf.append([mask, gids, *extra])
        chunk = [np.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0] for parts in zip(*self._buf)]
        buf_mask, buf_gids = chunk[0], chunk[1]
        buf_roots = roots[buf_gids]
        pending = ~decided[buf_roots]
        pending[buf_gids == 0] = False
        rows_pending = np.flatnonzero(pending.any(axis=1))
        n_out = int(rows_pending[0]) if rows_pending.size else buf_mask.shape[0]
        out = []
        if n_out:
            out_mask = buf_mask[:n_out].copy()
            sel = apply[buf_roots[:n_out]] & (buf_gids[:n_out] > 0)
            out_mask[sel] = 0 if self.kind == "small" else self._cls[buf_roots[:n_out][sel]]
            out.append((self.emitted, out_mask, *(e[..., :n_out, :] for e in chunk[2:])))
            self.emitted += n_out
        self._buf = [[c[..., n_out:, :] for c in chunk]] if n_out < buf_mask.shape[0] else []
        self._compact(roots)
        return out

    def _compact(self, roots: np.ndarray) -> None:
        """Renumber the components still referenced (buffer + last row) as 1..k; drop the rest."""
        live = np.zeros(roots.size, bool)
        live[roots[self._last[1]]] = True
        for chunk in self._buf:
            live[roots[chunk[1]]] = True
        live[0] = True
        keep = np.flatnonzero(live)
        remap = np.zeros(roots.size, np.int32)
        remap[keep] = np.arange(keep.size, dtype=np.int32)
        self._parent = np.arange(keep.size, dtype=np.int32)
        self._area, self._border, self._cls = self._area[keep], self._border[keep], self._cls[keep]
        self._last = (self._last[0], remap[roots[self._last[1]]])
        for chunk in self._buf:
            chunk[1] = remap[roots[chunk[1]]]

    def finish(self) -> list[tuple]:
        if self.received != self.height:
            raise ValueError(f"got {self.received} rows, image height is {self.height}")
        return []


class StripPostProcessor:
    """remove_small_objects then fill_holes on a mask arriving as row strips, exactly.

    The result equals ``fill_holes(remove_small_objects(full_mask, min_px), max_hole_px)``
    (when ``fill``) for any strip heights: objects and holes are followed across strips (see
    ``_ComponentStream``) and rows are handed on once every object and hole in them is decided.
    The delay (and memory: mask, int32 ids and ``extra`` of the rows held) is the height of the
    tallest undecided object, usually a few rows; a hole as tall as the image (e.g. a ring
    around the whole slide) would hold the rows it spans.

    ``push(row0, mask, extra=None)`` returns finished ``(row0, mask[, extra])`` strips, in
    order; ``extra`` (e.g. the probabilities, rows on axis -2) is delayed alongside so it stays
    aligned with the mask. ``finish()`` checks that the whole height arrived.
    """

    def __init__(self, height: int, width: int, *, min_px: int = 0, fill: bool = False,
                 max_hole_px: int | None = None, connectivity: int = 4):
        self.height, self.width = int(height), int(width)
        self._stages = []
        if min_px > 1:
            self._stages.append(_ComponentStream(height, width, "small", min_px=min_px, connectivity=connectivity))
        if fill:
            self._stages.append(_ComponentStream(height, width, "holes", max_hole_px=max_hole_px))

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
