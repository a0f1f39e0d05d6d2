"""Per-row class predictions as CSV: `segkit infer --task cls --csv`, `segkit oof` and `segkit clean` share it.

    id,[extra columns...],label[,<class 0>,<class 1>,...]

``label`` is the predicted class name (the argmax); with probabilities, one column per class
named by the class, in class-id order (the layout Kaggle classification submissions use).
Extra columns (e.g. oof's ``fold`` and given ``class``) sit between ``id`` and ``label``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path


@dataclass
class ClassTable:
    ids: list[str]
    labels: list[str]
    class_names: list[str]
    probs: Optional[np.ndarray] = None  # (rows, classes) float64, None when the file has no probabilities
    extra: dict[str, list[str]] = field(default_factory=dict)


def _check_names(class_names: Sequence[str], extra: Sequence[str]) -> None:
    reserved = {"id", "label", *extra}
    clash = sorted(reserved & set(class_names))
    if clash:
        raise SegkitError(f"class name(s) {clash} clash with the CSV's own columns ({', '.join(sorted(reserved))})")


def write_class_table(path: str | Path, ids: Sequence[str], probs: np.ndarray, class_names: Sequence[str], *,
                      with_probs: bool = True, extra: Optional[dict[str, Sequence]] = None,
                      overwrite: bool = False) -> Path:
    """Write one row per id (label = argmax of ``probs``), atomically; an existing file needs ``overwrite``."""
    probs = np.asarray(probs, dtype=np.float64)
    extra = dict(extra or {})
    if probs.shape != (len(ids), len(class_names)):
        raise SegkitError(f"{path}: {probs.shape} probabilities for {len(ids)} rows x {len(class_names)} classes")
    _check_names(class_names, list(extra))
    labels = [class_names[i] for i in probs.argmax(axis=1)] if len(ids) else []
    with atomic_path(path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *extra, "label", *(class_names if with_probs else [])])
        for row, (image_id, label) in enumerate(zip(ids, labels)):
            cells = [image_id, *(values[row] for values in extra.values()), label]
            if with_probs:
                cells += [f"{p:.6g}" for p in probs[row]]
            writer.writerow(cells)
    return Path(path)


def read_class_table(path: str | Path, extra: Sequence[str] = ()) -> ClassTable:
    """Read what write_class_table wrote; ``extra`` names the columns expected between id and label."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = ["id", *extra, "label"]
        if header is None or header[:len(expected)] != expected:
            raise SegkitError(f"{path}: expected the columns {','.join(expected)} first, got {header}")
        names = header[len(expected):]
        ids, labels, extra_cells, probs = [], [], {name: [] for name in extra}, []
        for line, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise SegkitError(f"{path}:{line}: {len(cells)} cells for {len(header)} columns")
            ids.append(cells[0])
            for offset, name in enumerate(extra, start=1):
                extra_cells[name].append(cells[offset])
            labels.append(cells[len(expected) - 1])
            try:
                probs.append([float(v) for v in cells[len(expected):]])
            except ValueError:
                raise SegkitError(f"{path}:{line}: a class probability is not a number") from None
    if not ids:
        raise SegkitError(f"{path}: no rows")
    if len(set(ids)) != len(ids):
        raise SegkitError(f"{path}: ids repeat")
    table = np.asarray(probs, dtype=np.float64) if names else None
    return ClassTable(ids, labels, names, table, extra_cells)
