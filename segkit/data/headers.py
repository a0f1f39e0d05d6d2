"""Every manifest row's image and label checked once, their sizes cached for the next start.

The first start opens each distinct (image, label) pair once through the ordinary readers
(segkit.io), so a missing or unreadable file is still one ``Error:`` line naming it, then records
the image's size, bands, dtype and reader. The record goes to a small store under the thumbnail
cache (``$SEGKIT_CACHE_DIR``, default ``~/.cache/segkit``; ``off`` keeps nothing), keyed by both
files' absolute path, size and mtime and the label options: a second start over unchanged files
opens none of them. Rows that share files (the same image listed under several ids) are read
once. Reading shows a progress line (files/s) when it has many files to read.
"""

from __future__ import annotations

import hashlib
import json
import os
import contextlib
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from segkit.data.dataset import LabelOptions, SourcePair, check_same_headers
from segkit.data.grids import cache_dir
from segkit.data.table import PairList, RowTable
from segkit.ground.geometry import clip_region
from segkit.io.atomic import atomic_path

_VERSION = 1
_FIELDS = ("height", "width", "channels", "dtype", "backend")
PROGRESS_FILES = 200  # fewer files to read than this: no progress line


def _label_keyed_by_id(label: str) -> bool:
    """Label files holding several images' labels (RLE rows, JSON keyed by id) are checked per row id."""
    return label.lower().endswith((".csv", ".json"))


def _stamp(path: str) -> str:
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _units(table: RowTable) -> tuple[np.ndarray, list[int]]:
    """(unit of each row, first row of each unit): rows with the same image, label (and id where the label
    file is keyed by id) share one unit, checked once."""
    seen: dict[tuple, int] = {}
    unit = np.empty(len(table), np.int64)
    first = []
    for i in range(len(table)):
        label = table.label[i]
        key = (table.image[i], label, table.id[i] if label and _label_keyed_by_id(label) else "")
        k = seen.get(key)
        if k is None:
            k = seen[key] = len(first)
            first.append(i)
        unit[i] = k
    return unit, first


def _store_path(options: LabelOptions, cache) -> Optional[Path]:
    folder = cache_dir(cache)
    if folder is None:
        return None
    digest = hashlib.sha1(json.dumps([_VERSION, repr(options)]).encode()).hexdigest()[:16]
    return folder.parent / "headers" / f"{digest}.npz"


def _load(path: Optional[Path]) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        with np.load(path) as data:
            return {k: data[k] for k in ("key", *_FIELDS)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}  # a damaged store is rebuilt, not an error


def _save(path: Optional[Path], store: dict) -> None:
    if path is None:
        return
    try:
        with atomic_path(path, overwrite=True, make_parents=True) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **store)
    except OSError:
        pass  # a read-only cache only costs the reading next time


def _read_unit(table: RowTable, row: int, options: LabelOptions) -> tuple:
    """Open the row's image and label (the checks of open_pairs); (height, width, channels, dtype, backend)."""
    pair = SourcePair(table.row(row), options)
    try:
        raster = pair.raster
        pair.labels  # noqa: B018 - opening validates the label file against the image
        return raster.height, raster.width, raster.channels, str(raster.dtype), raster.backend
    finally:
        pair.release()


class _Silent(contextlib.nullcontext):
    def update(self, n: int = 1) -> None:
        pass


def read_headers(table: RowTable, options: LabelOptions, *, cache=None,
                 progress: Optional[Callable[[int], object]] = None) -> dict:
    """Fill ``table.height``/``width``; returns the header columns per row (channels, dtype, backend).

    Files unchanged since a cached check are not opened again; the others are opened once each.
    ``progress(total)``: a progress bar (context manager with ``update(n)``, e.g. segkit.runs.progress
    .Progress) shown when at least PROGRESS_FILES files are read.
    """
    unit, first = _units(table)
    keys = np.array([hashlib.sha1("\n".join([
        _stamp(table.image[i]), _stamp(table.label[i]) if table.label[i] else "",
        table.id[i] if table.label[i] and _label_keyed_by_id(table.label[i]) else ""]).encode()).digest()
        for i in first], dtype="S20")
    store_path = _store_path(options, cache)
    store = _load(store_path)
    values = {name: np.zeros(len(first), np.int64) for name in _FIELDS[:3]}
    values.update(dtype=np.empty(len(first), "S16"), backend=np.empty(len(first), "S16"))
    found = np.zeros(len(first), bool)
    if store:
        pos = np.clip(np.searchsorted(store["key"], keys), 0, len(store["key"]) - 1)
        found = store["key"][pos] == keys
        for name in _FIELDS:
            values[name][found] = store[name][pos[found]]
    missing = np.flatnonzero(~found)
    done = np.zeros(len(missing), bool)
    bar = progress(len(missing)) if progress is not None and len(missing) >= PROGRESS_FILES else _Silent()
    try:
        with bar:
            for n, k in enumerate(missing):
                got = _read_unit(table, first[k], options)
                for name, value in zip(_FIELDS, got):
                    values[name][k] = value.encode() if isinstance(value, str) else value
                done[n] = True
                bar.update(1)
    finally:  # the files read before a bad one are not read again on the next start
        if done.any():
            _merge(store_path, store, keys[missing[done]], {name: values[name][missing[done]] for name in _FIELDS})
    table.height[:] = values["height"][unit]
    table.width[:] = values["width"][unit]
    return {name: values[name][unit] for name in _FIELDS[2:]}


def _merge(path: Optional[Path], store: dict, keys: np.ndarray, values: dict) -> None:
    """The store plus the new entries (keys sorted, one entry per key), saved atomically."""
    merged = {"key": np.concatenate([store["key"], keys]) if store else keys}
    for name in _FIELDS:
        merged[name] = np.concatenate([store[name], values[name]]) if store else values[name]
    merged["key"], index = np.unique(merged["key"], return_index=True)
    _save(path, {"key": merged["key"], **{name: merged[name][index] for name in _FIELDS}})


def open_table(rows, options: LabelOptions, *, reference: Optional[PairList] = None, cache=None,
               progress: Optional[Callable[[int], object]] = None) -> PairList:
    """open_pairs for many rows: the same checks (files readable, labels match their image, regions
    overlap their image, one band count and dtype over ``reference`` and these rows), with each
    distinct file opened once and no file reopened when its check is cached."""
    table = RowTable(rows)
    headers = read_headers(table, options, cache=cache, progress=progress)
    for i in np.flatnonzero(table.region[:, 0] >= 0):
        clip_region(int(table.height[i]), int(table.width[i]), table.row(int(i)).region,
                    what=f"manifest row {table.id[i]!r} ({table.image[i]})")
    pairs = PairList(table, options)
    pairs.headers = headers  # channels, dtype and backend per row (bytes: 16 B each)
    parts = [pairs] if reference is None or not len(reference) else [reference, pairs]
    check_same_headers(_Names(parts), *(np.concatenate([part.headers[name] for part in parts])
                                        for name in ("channels", "dtype", "backend")))
    return pairs


class _Names:
    """``names[i]``: the image file of row i over several PairLists, for an error message."""

    def __init__(self, parts: list[PairList]):
        self.parts = parts

    def __getitem__(self, index: int) -> str:
        for part in self.parts:
            if index < len(part):
                return part.table.image[index]
            index -= len(part)
        raise IndexError(index)
