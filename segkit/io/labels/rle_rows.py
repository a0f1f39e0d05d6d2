"""Rows of an RLE CSV by id, without parsing the whole file again for every image.

A HuBMAP-style train.csv is ~100 MB of RLE for a handful of ids, and every image (in the main
process and again in each DataLoader worker) needs one row of it. The first request scans the
file once, keeping only each row's id and byte range; later requests seek to their rows.
The index is per process and keyed by the file's size and mtime, so an edited file is re-read.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

from segkit.ground.errors import SegkitError

RLE_COLUMNS = ("rle", "encoding", "encodedpixels", "predicted", "annotation", "mask")
_CACHE: dict = {}
_CACHE_SIZE = 8


class CsvIndex:
    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, list[tuple[int, int, int]]] = {}  # id -> (line number, offset, length)
        with open(path, "rb") as fh:
            first = fh.readline()
            header = next(csv.reader([first.decode("utf-8-sig", "replace")]), None)
            if not header or not any(h.strip() for h in header):
                raise SegkitError(f"{path}: empty CSV; expected columns id,<rle>")
            if len(header) < 2:
                raise SegkitError(f"{path}: expected columns id,<rle>; got {header}")
            names = [h.strip().lower() for h in header]
            self.id_col = names.index("id") if "id" in names else 0
            self.rle_col = next((names.index(c) for c in RLE_COLUMNS if c in names), 1 if self.id_col == 0 else 0)
            offset = len(first)
            for line_no, line in enumerate(fh, start=2):
                if line.count(b'"') % 2:
                    raise _Fallback()  # a quoted field spans lines: not a one-row-per-line file
                key = self._id_of(line)
                if key is not None:
                    self.rows.setdefault(key, []).append((line_no, offset, len(line)))
                offset += len(line)

    def _id_of(self, line: bytes) -> str | None:
        if self.id_col == 0:
            head = line.split(b",", 1)[0]
            if b'"' not in head:
                return head.decode("utf-8", "replace").strip()
        row = next(csv.reader([line.decode("utf-8", "replace")]), None)
        return row[self.id_col].strip() if row and len(row) > self.id_col else None

    def fields(self, ids: set[str]) -> list[tuple[int, str]]:
        """(line number, RLE field) of every row whose id is in ids, in file order."""
        found = sorted(entry for key in ids for entry in self.rows.get(key, ()))
        out = []
        with open(self.path, "rb") as fh:
            for line_no, offset, length in found:
                fh.seek(offset)
                row = next(csv.reader([fh.read(length).decode("utf-8", "replace")]))
                out.append((line_no, row[self.rle_col] if len(row) > self.rle_col else ""))
        return out


class _Fallback(Exception):
    pass


def allow_long_fields() -> None:
    """Let Python's csv module read fields of any length (its default limit is 131072 characters).

    A whole-slide RLE is megabytes long; every CSV reader in segkit calls this first.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def rle_fields(path: Path, ids: set[str]) -> list[tuple[int, str]]:
    """(line number, RLE text) of the rows of `path` whose id is in ids."""
    allow_long_fields()
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    index = _CACHE.get(key)
    if index is None:
        try:
            index = CsvIndex(Path(path))
        except _Fallback:
            return _scan(Path(path), ids)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = index
    return index.fields(ids)


def _scan(path: Path, ids: set[str]) -> list[tuple[int, str]]:
    """Plain csv scan for files the line index cannot handle (multi-line quoted fields)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None) or []
        names = [h.strip().lower() for h in header]
        id_col = names.index("id") if "id" in names else 0
        rle_col = next((names.index(c) for c in RLE_COLUMNS if c in names), 1 if id_col == 0 else 0)
        return [(reader.line_num, row[rle_col] if len(row) > rle_col else "") for row in reader
                if len(row) > id_col and row[id_col].strip() in ids]



def rle_ids(path: Path) -> set[str]:
    """Every id with a row in `path` (what `segkit evaluate` matches against its images)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        return set(CsvIndex(Path(path)).rows)
    except _Fallback:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            names = [h.strip().lower() for h in next(reader, None) or []]
            id_col = names.index("id") if "id" in names else 0
            return {row[id_col].strip() for row in reader if len(row) > id_col}
