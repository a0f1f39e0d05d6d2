"""One RLE per object (the 2018 Data Science Bowl submission format), streamed from row strips.

    encoder = ObjectRleEncoder(height, width, order="F")
    for row0, instances in strips:
        rows += encoder.add(instances)        # [(object id, "start length ..."), ...] finished
    rows += encoder.finish()

Pixels are numbered as segkit.io.rle does: 1-indexed, column-major (``order="F"``, top to bottom
then left to right: the DSB and HuBMAP convention) or row-major (``"C"``). Runs are cut per strip
and per line and joined when they touch, so each object's RLE equals ``rle.encode(instances == id)``
of the whole image. An object is finished once it is absent from the last row received (objects
that are not connected stay open until the end). Only open objects' runs are held.
The inverse, reading such rows back per window, is segkit.io.labels.instances.InstanceRle.
"""

from __future__ import annotations

import numpy as np

from segkit.io.rle import _check_order, _format

__all__ = ["ObjectRleEncoder", "encode_objects"]


class ObjectRleEncoder:
    """Instance-id strips (h, W) in row order -> (object id, RLE) per finished object, by id."""

    def __init__(self, height: int, width: int, order: str = "F"):
        self.height, self.width, self.order = int(height), int(width), _check_order(order)
        self.received = 0
        self._open: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, strip: np.ndarray) -> list[tuple[int, str]]:
        strip = np.asarray(strip)
        h = strip.shape[0] if strip.ndim == 2 else -1
        if strip.ndim != 2 or strip.shape[1] != self.width or self.received + h > self.height:
            raise ValueError(f"strip {strip.shape} at row {self.received} does not fit the "
                             f"{self.height}x{self.width} image")
        if h == 0:
            return []
        lines = strip.T if self.order == "F" else strip   # runs go along lines of this array
        line_len = lines.shape[1]
        flat = np.ascontiguousarray(lines).ravel()
        change = np.ones(flat.size, bool)
        change[1:] = flat[1:] != flat[:-1]
        change[::line_len] = True
        first = np.flatnonzero(change)
        length = np.diff(np.append(first, flat.size))
        value = flat[first]
        keep = value != 0
        first, length, value = first[keep], length[keep], value[keep]
        line, pos = first // line_len, first % line_len
        if self.order == "F":   # line = column, pos = row within the strip
            start = line * self.height + self.received + pos
        else:                   # line = row within the strip, pos = column
            start = (self.received + line) * self.width + pos
        order = np.argsort(value, kind="stable")
        value, start, length = value[order], start[order], length[order]
        ids, cuts = np.unique(value, return_index=True)
        for k, a, b in zip(ids.tolist(), cuts.tolist(), np.append(cuts[1:], value.size).tolist()):
            self._open.setdefault(int(k), []).append((start[a:b], length[a:b]))
        self.received += h
        if self.received == self.height:
            return self.finish()
        still = set(np.unique(strip[-1]).tolist())
        return self._close([k for k in self._open if k not in still])

    def _close(self, ids) -> list[tuple[int, str]]:
        out = []
        for k in sorted(ids):
            parts = self._open.pop(k)
            start = np.concatenate([p[0] for p in parts])
            length = np.concatenate([p[1] for p in parts])
            order = np.argsort(start, kind="stable")
            start, end = start[order], start[order] + length[order]
            joined = np.ones(start.size, bool)            # a run that starts where the last ended
            joined[1:] = start[1:] != end[:-1]             # continues it (across strips and lines)
            first = np.flatnonzero(joined)
            last = np.append(first[1:] - 1, start.size - 1)
            out.append((k, _format(start[first] + 1, end[last] - start[first])))
        return out

    def finish(self) -> list[tuple[int, str]]:
        if self.received != self.height:
            raise ValueError(f"got {self.received} rows, image height is {self.height}")
        return self._close(list(self._open))


def encode_objects(instances: np.ndarray, order: str = "F") -> list[tuple[int, str]]:
    """(object id, RLE) of every object of a whole (h, w) id map, by id."""
    instances = np.asarray(instances)
    encoder = ObjectRleEncoder(*instances.shape, order=order)
    return encoder.add(instances) + encoder.finish()
