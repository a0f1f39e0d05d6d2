"""Class labels for `--task cls` and `seg+cls`: names, class-folder datasets, the epoch's order, tile classes.

- A manifest's ``class`` cell holds a class name or a class id. ``data.class_names`` lists the
  names in id order; a cell matching a name takes that name's id, otherwise an integer cell is
  an id. Without ``data.class_names`` the names are the sorted distinct names of the manifest
  (or "0".."K" when every cell is an id); the run saves the resolved list in its config.yaml,
  so inference writes the same names.
- A folder with one sub-folder per class (``digits/train/0/*.png``, ``digits/train/1/...``) is a
  manifest too: the sub-folder names are the class names.
- seg+cls: a tile's class comes from its mask: 1 ("object") when it holds at least
  ``data.cls_from_mask`` foreground source pixels, else 0 ("empty"), the class `infer.cls_gate`
  reads.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segkit.data.manifest import IMAGE_SUFFIXES, ManifestRow, _stem
from segkit.ground.errors import SegkitError
from segkit.ground.ignore import IGNORE_INDEX

TILE_CLASSES = ["empty", "object"]  # the seg+cls head: class 0 is what infer.cls_gate tests


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def is_class_folder(folder: Path) -> bool:
    """A folder without images/ whose sub-folders hold images: one sub-folder per class."""
    folder = Path(folder)
    if (folder / "images").is_dir():
        return False
    return any(p.is_dir() and not p.name.startswith(".") and _images_in(p) for p in folder.iterdir())


def class_folder_rows(folder: str | Path) -> list[ManifestRow]:
    """One row per image of ``folder/<class>/``; the class is the sub-folder's name, the id the file stem
    (``<class>/<stem>`` when two classes hold the same stem)."""
    folder = Path(folder)
    found = [(sub.name, image) for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
             for image in _images_in(sub)]
    if not found:
        raise SegkitError(f"{folder}: no class sub-folders with images ({', '.join(IMAGE_SUFFIXES)})")
    stems = [_stem(image) for _, image in found]
    clash = len(set(stems)) != len(stems)
    return [ManifestRow(id=f"{name}/{stem}" if clash else stem, image=image.absolute(), target=name)
            for (name, image), stem in zip(found, stems)]


def _names_from_rows(rows: Sequence[ManifestRow], where: str) -> list[str]:
    targets = [row.target for row in rows if row.target is not None]
    if all(isinstance(t, int) for t in targets):
        return [str(i) for i in range(max(targets) + 1)] if targets else []
    if any(isinstance(t, int) for t in targets):
        raise SegkitError(f"{where}: the class column mixes names and ids; list the names in data.class_names")
    return sorted(set(targets))


def resolve_classes(rows: Sequence[ManifestRow], class_names: Optional[Sequence], where: str,
                    task: str = "cls") -> tuple[list[ManifestRow], list[str]]:
    """(rows with integer class ids, class names in id order); every bad cell is a one-line error."""
    missing = [row for row in rows if row.target is None]
    if missing and task == "cls":
        row = missing[0]
        if row.label is not None:
            raise SegkitError(f"{where}: manifest row {row.id!r} has a label ({Path(row.label).name}) but no class; "
                              "--task cls needs a class per row (for tile classes from masks use --task seg+cls)")
        raise SegkitError(f"{where}: manifest row {row.id!r} has no class (--task cls needs a class per row)")
    names = [str(n) for n in class_names] if class_names is not None else _names_from_rows(rows, where)
    if len(set(names)) != len(names):
        raise SegkitError(f"config key data.class_names: names repeat in {names}")
    index = {name: i for i, name in enumerate(names)}
    resolved = []
    for row in rows:
        target = row.target
        if target is not None:
            if str(target) in index:
                target = index[str(target)]
            elif isinstance(target, int) and 0 <= target < len(names):
                pass
            else:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                raise SegkitError(f"{where}: manifest row {row.id!r}: class {target!r} is not in data.class_names "
                                  f"({shown})")
        resolved.append(dataclasses.replace(row, target=target))
    if len(names) < 2 and task == "cls":
        raise SegkitError(f"{where}: --task cls needs at least 2 classes, found {names}")
    return resolved, names


def warn_missing_classes(train_rows: Sequence[ManifestRow], names: Sequence[str], where: str) -> list[str]:
    """Warn (naming them) about classes with no training row; returns their names."""
    present = {row.target for row in train_rows}
    absent = [name for i, name in enumerate(names) if i not in present]
    if absent:
        warnings.warn(f"{where}: class(es) {', '.join(map(repr, absent))} have no training rows", UserWarning,
                      stacklevel=2)
    return absent


def epoch_order(targets: Sequence[int], *, seed: int, epoch: int, rank: int = 0, world: int = 1,
                balanced: bool = False, fraction: float = 1.0, min_length: int = 1) -> np.ndarray:
    """Row indices this rank visits in ``epoch``: a pure function of its arguments (exact resume).

    Default: a permutation of the rows (each row once per epoch). ``balanced``: as many draws,
    with replacement, each row weighted 1 / (rows of its class), so every class is drawn equally
    often (off by default: with noisy labels it repeats the rare classes' mistakes). ``fraction``
    keeps that share of the epoch (train.subset). Every rank gets the same count, at least
    ``min_length`` (one batch), repeating the order when the rows are fewer.
    """
    targets = np.asarray(targets, dtype=np.int64)
    count = len(targets)
    if count == 0:
        raise SegkitError("epoch_order: no training rows")
    rng = np.random.default_rng([int(seed), int(epoch), 0xC1A5])  # the same order on every rank
    if balanced:
        per_class = np.bincount(targets)
        weights = 1.0 / per_class[targets]
        order = rng.choice(count, size=count, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(count)
    order = order[:max(1, int(count * float(fraction)))]
    share = max(int(min_length), len(order) // int(world))
    order = np.resize(order, share * int(world))  # repeats from the start when too short
    return order[int(rank)::int(world)][:share]


def tile_class(mask: np.ndarray, min_px: float, source_px_per_px: float = 1.0) -> int:
    """1 ("object") when the mask holds >= ``min_px`` foreground source pixels, else 0 ("empty").

    ``source_px_per_px``: source pixels one mask pixel stands for ((fov / size)^2 for a window
    read at network size).
    """
    labelled = (mask != 0) & (mask != IGNORE_INDEX)  # ignored pixels are not objects
    return int(np.count_nonzero(labelled) * float(source_px_per_px) >= float(min_px))
