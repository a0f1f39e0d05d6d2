"""Objects from body/border/contact probabilities: a seeded watershed, whole or streamed in strips.

The method of the 2018 Data Science Bowl and SpaceNet winners (topcoders, DSB 2018; Seferbekov,
SpaceNet 4): objects are ``body >= mask``; seeds are the confident cores, ``body >= seed`` where
``border`` and ``contact`` are both ``< border``; each seed is flooded over ``1 - body`` within the
objects (scikit-image's ``watershed``, markers = 4-connected seed components, 4-connected
flooding). A connected object region with one seed component or none is one object as it is, so
small objects whose core never passes the seed threshold are not lost.

:class:`StripWatershed` gives exactly the whole-image result on row strips. Flooding never crosses
the background, so each 4-connected object region is flooded on its own (see ``flood``). Regions are followed across strip seams with a
union-find (as segkit.post.morphology._ComponentStream) and flooded as soon as they are closed
(absent from the last row received), with all their rows held; rows are handed on once every
region in them is flooded. The rows held are those of the tallest open region (the "context
band" adapts to the objects); memory does not grow with the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import warnings

import cv2
import numpy as np

from segkit.ground.settings import InferConfig
from segkit.post.morphology import all_roots, find_root

__all__ = ["SeedSettings", "seeds_and_mask", "flood", "watershed_instances", "StripWatershed"]


@dataclass(frozen=True)
class SeedSettings:
    """Thresholds on probabilities: ``mask`` (body >= mask: object pixel), ``seed`` (body >= seed and
    border, contact < ``border``: seed pixel)."""

    mask: float = InferConfig.threshold
    seed: float = InferConfig.seed_threshold
    border: float = InferConfig.seed_border


def seeds_and_mask(probs: np.ndarray, names: Sequence[str], settings: SeedSettings):
    """(object mask bool, seed mask bool, body float32) of (T, h, w) probabilities whose channels
    are the targets ``names``."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(names):
        raise ValueError(f"watershed: expected probabilities ({len(names)}, h, w) for {list(names)}, "
                         f"got shape {probs.shape}")
    # a copy: the rows may be held while the predictor reuses its own buffers
    body = np.array(probs[list(names).index("body")], dtype=np.float32)
    mask = body >= settings.mask
    seeds = mask & (body >= settings.seed)
    for name in ("border", "contact"):
        if name in names:
            seeds &= probs[list(names).index(name)] < settings.border
    return mask, seeds, body


def flood(body: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """int32 objects 1..k of ``mask``: each 4-connected region of the mask with two or more seed
    components is split by flooding them over ``1 - body`` (scikit-image's watershed on the
    region's bounding box, the region alone); a region with one seed component or none is one object.

    Regions are flooded one at a time on purpose: scikit-image breaks ties between marker pixels of
    equal value (saturated probabilities are common) by its heap's layout, which depends on
    everything in the array; a region alone gets the same result wherever it is cut from.
    """
    from skimage.segmentation import watershed

    n, regions, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4,
                                                            ltype=cv2.CV_32S)
    n_seeds, markers = cv2.connectedComponents((seeds & mask).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    # a 4-connected seed component lies in one region: count seed components per region
    hit = markers > 0
    region_of_seed = np.zeros(n_seeds, np.int64)
    region_of_seed[markers[hit]] = regions[hit]
    split = np.bincount(region_of_seed[1:], minlength=n) >= 2
    split[0] = False
    lut = np.zeros(n, np.int32)
    whole = np.flatnonzero(~split)[1:]
    lut[whole] = np.arange(1, whole.size + 1, dtype=np.int32)
    out = lut[regions]
    count = whole.size
    for i in np.flatnonzero(split).tolist():
        x, y, w, h = (int(v) for v in stats[i, :4])
        box = (slice(y, y + h), slice(x, x + w))
        sub = regions[box] == i
        labels = watershed(np.float32(1.0) - body[box], np.where(sub, markers[box], 0), mask=sub, connectivity=1)
        values, inverse = np.unique(labels[sub], return_inverse=True)
        out[box][sub] = inverse.astype(np.int32) + np.int32(count + 1)
        count += values.size
    return out


def watershed_instances(probs: np.ndarray, names: Sequence[str], settings: SeedSettings = SeedSettings()) -> np.ndarray:
    """int32 instances (0 = background) of a whole (T, h, w) probability map."""
    mask, seeds, body = seeds_and_mask(probs, names, settings)
    return flood(body, seeds, mask)


class StripWatershed:
    """watershed_instances on probabilities arriving as row strips, exactly (see module doc).

    ``push(row0, probs)`` takes (T, h, W) strips in row order and returns finished
    ``(row0, instances, body)`` strips: int32 object ids (unique over the whole image, numbered in
    the order objects are finished) and the body probability rows (for mean probabilities).
    ``finish()`` checks that the whole height arrived. Calling the object on an iterable of
    ``(row0, probs)`` yields the finished strips. Strips are processed ``chunk_rows`` rows at a time
    (the result is the same for any height): the temporaries of labelling and flooding, ~40 bytes
    per pixel, then scale with ``chunk_rows * width``, not with the predictor's strip height.
    ``max_rows`` bounds the rows held: a region still open after that many rows (a blob as tall as
    the slide, e.g. from a low threshold on dense tissue) has its upper part flooded then and there,
    so objects crossing that cut get two ids (a warning line names the rows; ``cut_rows`` lists them).
    """

    def __init__(self, height: int, width: int, names: Sequence[str], settings: SeedSettings = SeedSettings(),
                 *, chunk_rows: int = 64, max_rows: int = 2048):
        self.height, self.width = int(height), int(width)
        self.chunk_rows, self.max_rows = int(chunk_rows), max(2, int(max_rows))
        self._cut_rows: list[int] = []  # where a region taller than max_rows was cut
        self.names, self.settings = tuple(names), settings
        self.received = self.emitted = self.objects = 0
        self._body = np.zeros((0, self.width), np.float32)
        self._seeds = np.zeros((0, self.width), bool)
        self._gid = np.zeros((0, self.width), np.int32)   # region id (union-find), 0 = background
        self._out = np.zeros((0, self.width), np.int32)   # object id once flooded, else 0
        self._last: np.ndarray | None = None                # region ids of the last row received
        self._parent = np.zeros(1, np.int32)

    def push(self, row0: int, probs: np.ndarray) -> list[tuple]:
        return list(self._chunks(row0, probs))

    def _chunks(self, row0: int, probs: np.ndarray) -> Iterator[tuple]:
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[1] <= self.chunk_rows:
            yield from self._push(row0, probs)
            return
        for r in range(0, probs.shape[1], self.chunk_rows):
            yield from self._push(row0 + r, probs[:, r:r + self.chunk_rows])

    def _push(self, row0: int, probs: np.ndarray) -> list[tuple]:
        if row0 != self.received:
            raise ValueError(f"strips must arrive in row order: expected row {self.received}, got {row0}")
        probs = np.asarray(probs)
        h = probs.shape[1] if probs.ndim == 3 else 0
        if probs.ndim != 3 or probs.shape[2] != self.width or row0 + h > self.height:
            raise ValueError(f"strip {probs.shape} at row {row0} does not fit the {self.height}x{self.width} image")
        if h == 0:
            return []
        mask, seeds, body = seeds_and_mask(probs, self.names, self.settings)
        n, gid = cv2.connectedComponents(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        base = self._parent.size - 1
        np.add(gid, np.int32(base), out=gid, where=mask)  # in place: strips can be ~10^7 pixels
        self._parent = np.concatenate([self._parent, np.arange(base + 1, base + n, dtype=np.int32)])
        if self._last is not None:   # regions touching across the seam are one region
            touch = (self._last > 0) & (gid[0] > 0)
            for a, b in np.unique(np.stack([self._last[touch], gid[0][touch]]), axis=1).T.tolist():
                ra, rb = find_root(self._parent, a), find_root(self._parent, b)
                if ra != rb:
                    self._parent[max(ra, rb)] = min(ra, rb)
        self.received += h
        self._last = gid[-1].copy()
        if self._gid.shape[0]:   # rows held from earlier strips
            self._body = np.concatenate([self._body, body])
            self._seeds = np.concatenate([self._seeds, seeds])
            self._gid = np.concatenate([self._gid, gid])
            self._out = np.concatenate([self._out, np.zeros_like(gid)])
        else:                     # nothing held: keep this strip's arrays, no copies
            self._body, self._seeds, self._gid, self._out = body, seeds, gid, np.zeros_like(gid)
        roots = all_roots(self._parent)
        self._flood_closed(roots)
        return self._emit(roots)

    def _flood_closed(self, roots: np.ndarray) -> None:
        """Flood every region that can no longer grow (not in the last row, or the image is complete)."""
        is_open = np.zeros(roots.size, bool)
        if self.received < self.height:
            is_open[roots[self._last]] = True
            is_open[0] = False
        pending = (self._gid > 0) & (self._out == 0)
        closed = pending & ~is_open[roots[self._gid]]
        held = self._gid.shape[0]
        # only rows of regions still open are cut (a region closed by the last strip is flooded whole)
        if held > self.max_rows and (pending & ~closed)[:held - self.max_rows // 2].any():
            cut = held - self.max_rows // 2   # flood the open regions' rows above it now
            closed[:cut] |= pending[:cut]
            self._cut_rows.append(self.received - held + cut)
            if len(self._cut_rows) == 1:
                warnings.warn(f"watershed: an object region is taller than {self.max_rows} rows; cut at row "
                              f"{self._cut_rows[0]} (objects crossing the cut get two ids)", UserWarning, stacklevel=4)
        if not closed.any():
            return
        rows = np.flatnonzero(closed.any(axis=1))
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        sub = closed[r0:r1]
        labels = flood(self._body[r0:r1], self._seeds[r0:r1] & sub, sub)
        hit = labels > 0
        self._out[r0:r1][hit] = labels[hit] + np.int32(self.objects)
        self.objects += int(labels.max())

    def _emit(self, roots: np.ndarray) -> list[tuple]:
        waiting = (self._gid > 0) & (self._out == 0)
        rows = np.flatnonzero(waiting.any(axis=1))
        n_out = int(rows[0]) if rows.size else self._out.shape[0]
        out = []
        if n_out:
            out.append((self.emitted, self._out[:n_out], self._body[:n_out]))  # views: the buffer is rebuilt
            self.emitted += n_out
        self._body, self._seeds = self._body[n_out:], self._seeds[n_out:]
        self._gid, self._out = self._gid[n_out:], self._out[n_out:]
        # compact: renumber the regions still referenced (held rows + last row) as 1..k
        live = np.unique(np.concatenate([roots[self._gid].ravel(), roots[self._last], [0]]))
        remap = np.zeros(roots.size, np.int32)
        remap[live] = np.arange(live.size, dtype=np.int32)
        self._parent = np.arange(live.size, dtype=np.int32)
        self._gid = remap[roots[self._gid]]
        self._last = remap[roots[self._last]]
        return out

    def finish(self) -> list[tuple]:
        if self.received != self.height:
            raise ValueError(f"got {self.received} rows, image height is {self.height}")
        return []

    @property
    def cut_rows(self) -> list[int]:
        """Image rows where a region taller than ``max_rows`` was cut (empty: the result is exact)."""
        return list(self._cut_rows)

    def __call__(self, strips: Iterable[tuple]) -> Iterator[tuple]:
        for row0, probs in strips:
            yield from self._chunks(row0, probs)  # each chunk's rows go on before the next is flooded
        yield from self.finish()
