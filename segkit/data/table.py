"""Manifest rows as columns: a few hundred bytes per row, no Python object per row.

A list of 200,000 :class:`~segkit.data.manifest.ManifestRow` objects (each with its ``Path``)
costs a few hundred MB, and a forked DataLoader worker copies every page the garbage collector
or a reference count touches. :class:`RowTable` keeps the same rows as numpy arrays: strings
(ids, paths, groups, classes) joined into one UTF-8 buffer with offsets, numbers as int arrays.
Numpy arrays are plain buffers: a worker reads them without writing to their pages.

:class:`PairList` is the sequence of :class:`~segkit.data.dataset.SourcePair` the dataset and
validation index: each pair is made from the table when asked for, and only the last few stay
open (their readers hold decoded images), so memory stays flat however many rows there are.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from segkit.data.dataset import LabelOptions, SourcePair
from segkit.data.manifest import ManifestRow
from segkit.ground.geometry import Window

OPEN_PAIRS_KEPT = 16  # pairs (readers) kept open per process: WSI handles are reused, small images are not held


class StringColumn:
    """Strings as one UTF-8 buffer plus int64 offsets: ``column[i]`` decodes one on demand."""

    def __init__(self, values: Sequence[str]):
        encoded = [str(v).encode("utf-8") for v in values]
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(encoded), np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.data[start:stop].tobytes().decode("utf-8")

    def take(self, indices) -> "StringColumn":
        return StringColumn([self[int(i)] for i in indices])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


class RowTable:
    """Manifest rows in columns (see the module docstring); ``row(i)`` rebuilds one ManifestRow.

    ``label``, ``target`` and ``group`` hold "" for none; ``region`` (n, 4) and ``fold`` hold -1 for
    none. ``height``/``width`` (int32, 0 until known) are the images' sizes in source pixels.
    """

    def __init__(self, rows: Sequence[ManifestRow]):
        self.id = StringColumn([r.id for r in rows])
        self.image = StringColumn([str(r.image) for r in rows])
        self.label = StringColumn([r.label or "" for r in rows])
        self.target = StringColumn(["" if r.target is None else str(r.target) for r in rows])
        self.group = StringColumn([r.group or "" for r in rows])
        self.region = np.array([tuple(r.region) if r.region is not None else (-1, -1, -1, -1) for r in rows],
                               np.int64).reshape(-1, 4)
        self.fold = np.array([-1 if r.fold is None else int(r.fold) for r in rows], np.int64)
        self.height = np.zeros(len(rows), np.int32)
        self.width = np.zeros(len(rows), np.int32)

    def __len__(self) -> int:
        return len(self.fold)

    def row(self, index: int) -> ManifestRow:
        """The ManifestRow of line ``index``, made on demand (not kept)."""
        target = self.target[index]
        region = self.region[index]
        return ManifestRow(
            id=self.id[index], image=Path(self.image[index]), label=self.label[index] or None,
            target=(int(target) if target.isdigit() else target) if target else None,
            group=self.group[index] or None,
            region=Window(*(int(v) for v in region)) if region[0] >= 0 else None,
            fold=int(self.fold[index]) if self.fold[index] >= 0 else None,
        )

    def extent(self) -> np.ndarray:
        """(n, 2) height and width of each row's region clipped to its image (the image without one)."""
        height, width = self.height.astype(np.int64), self.width.astype(np.int64)
        has = self.region[:, 0] >= 0
        r0, c0 = np.where(has, self.region[:, 0], 0), np.where(has, self.region[:, 1], 0)
        h = np.where(has, np.minimum(r0 + self.region[:, 2], height) - r0, height)
        w = np.where(has, np.minimum(c0 + self.region[:, 3], width) - c0, width)
        return np.stack([h, w], axis=1)

    @property
    def nbytes(self) -> int:
        strings = sum(c.nbytes for c in (self.id, self.image, self.label, self.target, self.group))
        return int(strings + self.region.nbytes + self.fold.nbytes + self.height.nbytes + self.width.nbytes)


class PairList(Sequence):
    """The rows of a RowTable as SourcePairs, made on demand; the last OPEN_PAIRS_KEPT stay open.

    Indexing, ``len`` and iteration work as on a list of pairs. Pickling (spawned workers) sends
    the table's arrays and no open reader.
    """

    def __init__(self, table: RowTable, options: LabelOptions):
        self.table = table
        self.options = options
        self._open: "OrderedDict[int, SourcePair]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        pair = self._open.get(index)
        if pair is None:
            pair = SourcePair(self.table.row(index), self.options)
            self._open[index] = pair
            while len(self._open) > OPEN_PAIRS_KEPT:
                self._open.popitem(last=False)[1].release()
        else:
            self._open.move_to_end(index)
        return pair

    def __iter__(self) -> Iterator[SourcePair]:
        for index in range(len(self)):
            yield self[index]

    def __add__(self, other):
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)

    def name(self, index: int) -> str:
        """How errors name row ``index`` (as SourcePair.name), without opening anything."""
        return f"manifest row {self.table.id[index]!r} ({self.table.image[index]})"

    def __getstate__(self):
        return {"table": self.table, "options": self.options, "_open": OrderedDict()}


def small_rows(table: RowTable, fov_px: int) -> np.ndarray:
    """Bool per row: its region (or image) fits in one fov_px window, so the window is the whole of it."""
    extent = table.extent()
    return (extent[:, 0] <= int(fov_px)) & (extent[:, 1] <= int(fov_px))
