"""The dataset table: one row per image (image, label source, class, group, region, fold) and fold splits.

CSV columns (only ``image`` is required; empty cells mean "none"):
    id      unique name of the image (default: the image file stem; RLE rows are looked up by it)
    image   image path, relative to the CSV's folder (or absolute)
    label   label source path (mask raster, GeoJSON/JSON polygons or RLE CSV), relative like image
    class   class name or id (``--task cls``; see segkit.data.classes for how names map to ids)
    group   rows sharing a group (e.g. one patient or slide) always land in the same fold
    region  "row,col,height,width" in source pixels: only this part of the image is used
    fold    explicit fold number (kept by assign_folds)
    weight  how often training draws windows from this row, relative to its area (default 1;
            e.g. 0.5 for pseudo-labelled rows, which `segkit pseudo` writes)
"""

from __future__ import annotations

import csv
import difflib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io.labels.rle_rows import allow_long_fields
from segkit.io.atomic import atomic_path

COLUMNS = ("id", "image", "label", "class", "group", "region", "fold", "weight")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".jp2", ".svs", ".ndpi", ".vrt")
LABEL_SUFFIXES = IMAGE_SUFFIXES + (".geojson", ".json")
FOLD_METHODS = ("random", "stratified", "group")


@dataclass
class ManifestRow:
    id: str
    image: Path
    label: str | None = None
    target: int | str | None = None  # class id, or a class name until resolve_classes maps it
    group: str | None = None
    region: Window | None = None
    fold: int | None = None
    weight: float | None = None  # sampling weight; None = 1


# ---------------------------------------------------------------- reading


def _parse_region(text: str, where: str) -> Window:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] <= 0 or values[3] <= 0:
        raise SegkitError(
            f"{where}: region {text!r} must be 'row,col,height,width' (integers, height and width > 0)"
        )
    return Window(*values)


def _parse_int(text: str, where: str, name: str, minimum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SegkitError(f"{where}: {name} {text!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SegkitError(f"{where}: {name} {value} must be >= {minimum}")
    return value


def _parse_weight(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SegkitError(f"{where}: weight {text[:40]!r} is not a number") from None
    if not (value > 0 and np.isfinite(value)):
        raise SegkitError(f"{where}: weight {value} must be a finite number > 0")
    return value


def _parse_class(text: str, where: str) -> int | str:
    """A non-negative integer is a class id, anything else a class name; "-3" is neither."""
    if text.lstrip("+-").isdigit():
        return _parse_int(text, where, "class", 0)
    return text


def _resolve(base: Path, text: str, where: str, column: str, seen: dict | None = None) -> Path:
    """The cell's file, absolute (".." folded; symlinks kept), which must exist. ``seen``: the cells
    resolved so far (text -> Path): rows listing the same file share one Path, checked once."""
    if seen is not None and text in seen:
        return seen[text]
    path = os.path.abspath(os.path.join(base, os.path.expanduser(text)))
    if not os.path.exists(path):
        raise SegkitError(f"{where}: {column} file {text!r} not found ({path})")
    path = Path(path)
    if seen is not None:
        seen[text] = path
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest CSV; every problem raises SegkitError naming the CSV line and the file.

    Paths are resolved against the CSV's folder and must exist.  Ids must be unique.
    """
    path = Path(path)
    allow_long_fields()
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    base = path.parent
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    files: dict[str, Path] = {}  # cells already resolved: a file listed many times is checked once
    with handle:
        reader = csv.DictReader(handle)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        if not header:
            raise SegkitError(f"{path}: empty manifest (expected a header with an 'image' column)")
        for name in header:
            if name not in COLUMNS:
                near = difflib.get_close_matches(name, COLUMNS, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise SegkitError(
                    f"{path}: unknown column {name!r}{hint}; valid columns: {', '.join(COLUMNS)}"
                )
        if len(set(header)) != len(header):
            raise SegkitError(f"{path}: duplicate column names in header {header}")
        if "image" not in header:
            raise SegkitError(f"{path}: no 'image' column; valid columns: {', '.join(COLUMNS)}")
        reader.fieldnames = header
        for raw in reader:
            where = f"{path}:{reader.line_num}"
            if None in raw:
                raise SegkitError(f"{where}: more cells than header columns")
            cell = {k: (v or "").strip() for k, v in raw.items()}
            if not any(cell.values()):
                continue  # blank line
            if not cell.get("image"):
                raise SegkitError(f"{where}: empty image cell")
            image = _resolve(base, cell["image"], where, "image", files)
            label = cell.get("label") or None
            row = ManifestRow(
                id=cell.get("id") or _stem(image),
                image=image,
                label=str(_resolve(base, label, where, "label", files)) if label else None,
                target=_parse_class(cell["class"], where) if cell.get("class") else None,
                group=cell.get("group") or None,
                region=_parse_region(cell["region"], where) if cell.get("region") else None,
                fold=_parse_int(cell["fold"], where, "fold", 0) if cell.get("fold") else None,
                weight=_parse_weight(cell["weight"], where) if cell.get("weight") else None,
            )
            if row.id in seen:
                raise SegkitError(f"{where}: id {row.id!r} repeats line {seen[row.id]}; ids must be unique")
            seen[row.id] = reader.line_num
            rows.append(row)
    if not rows:
        raise SegkitError(f"{path}: manifest has no rows")
    return rows


# ---------------------------------------------------------------- folder convention


def _stem(path: Path) -> str:
    """File name without its image suffix; double suffixes like .ome.tif count as one."""
    name = path.name
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def manifest_from_folder(folder: str | Path) -> list[ManifestRow]:
    """Rows from ``folder/images/`` and, when present, ``folder/masks/`` matched by stem.

    A mask matches an image when its stem equals the image stem or the image stem plus
    ``_mask`` (``a.tif`` <- ``a.png`` or ``a_mask.png``; .geojson/.json polygons count).
    Decision: without a masks/ folder every label is None (inference or cls); with one, every
    image needs exactly one mask and every mask an image - a missing mask is an error, not an
    empty label, because silently training on "no foreground" is worse than stopping.
    """
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        raise SegkitError(f"{folder}: no images/ folder (expected images/ and optionally masks/)")
    images = _files(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise SegkitError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    by_stem: dict[str, Path] = {}
    for image in images:
        stem = _stem(image)
        if stem in by_stem:
            raise SegkitError(f"{image}: same stem as {by_stem[stem].name}; image stems must be unique")
        by_stem[stem] = image
    masks: dict[str, Path] = {}
    if masks_dir.is_dir():
        for mask in _files(masks_dir, LABEL_SUFFIXES):
            stem = _stem(mask)
            key = stem if stem in by_stem else stem[: -len("_mask")] if stem.endswith("_mask") else stem
            if key not in by_stem:
                raise SegkitError(f"{mask}: no image in {images_dir} with stem {key!r}")
            if key in masks:
                raise SegkitError(f"{mask}: image {by_stem[key].name} already has mask {masks[key].name}")
            masks[key] = mask
        missing = [by_stem[s].name for s in by_stem if s not in masks]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise SegkitError(f"{masks_dir}: no mask for image(s) {', '.join(missing[:3])}{more}")
    return [
        ManifestRow(id=stem, image=image, label=str(masks[stem]) if stem in masks else None)
        for stem, image in by_stem.items()
    ]


def apply_group_pattern(rows: list[ManifestRow], pattern: str | None) -> list[ManifestRow]:
    """Rows without a group take it from their image file's stem through ``pattern`` (data.group_pattern).

    ``pattern`` is a regular expression searched in the stem; the group is its first capture
    group, or the whole match when it has none: ``'^(.+)_slice\\d+$'`` puts ``scan7_slice012.tif``
    in group ``scan7``, so every slice of a scan lands in one fold. A stem that does not match is
    an error naming the file (a silent fallback would let a scan span two folds).
    """
    if not pattern:
        return rows
    regex = re.compile(pattern)
    out = []
    for row in rows:
        if row.group is None:
            stem = _stem(row.image)
            match = regex.search(stem)
            if match is None:
                raise SegkitError(f"{row.image}: file name {stem!r} does not match data.group_pattern {pattern!r}")
            row = replace(row, group=match.group(1) if regex.groups else match.group(0))
        out.append(row)
    return out


# ---------------------------------------------------------------- writing


def _cell(path: str | Path, base: Path) -> str:
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base)).replace(os.sep, "/")
    except ValueError:  # another drive on Windows
        return os.path.abspath(path)


def _class_cell(target: int | str, class_names: list[str] | None) -> str:
    if class_names is not None and isinstance(target, int):
        return class_names[target]
    return str(target)


def write_manifest(rows: list[ManifestRow], path: str | Path, class_names: list[str] | None = None) -> Path:
    """Write rows as a manifest CSV (paths relative to its folder), atomically.

    With ``class_names``, integer classes are written as their names. The weight column is
    written only when a row has a weight, so manifests without weights keep their old header."""
    path = Path(path)
    base = path.parent
    weighted = any(r.weight is not None for r in rows)
    with atomic_path(path, overwrite=True, make_parents=True) as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS if weighted else COLUMNS[:-1])
        for r in rows:
            weight = ["" if r.weight is None else f"{r.weight:g}"] if weighted else []
            writer.writerow([
                r.id,
                _cell(r.image, base),
                _cell(r.label, base) if r.label else "",
                "" if r.target is None else _class_cell(r.target, class_names),
                r.group or "",
                ",".join(str(int(v)) for v in r.region) if r.region else "",
                "" if r.fold is None else int(r.fold),
                *weight,
            ])
    return path


# ---------------------------------------------------------------- folds


def foreground_bins(fractions, n_bins: int = 4) -> list[int]:
    """Strata for segmentation: bin 0 = no foreground, bins 1..n_bins-1 = quantiles of the rest."""
    f = np.asarray(fractions, dtype=np.float64)
    if n_bins < 1:
        raise SegkitError(f"n_bins: must be >= 1, got {n_bins}")
    bins = np.zeros(f.shape, dtype=np.int64)
    pos = f > 0
    if n_bins == 1 or not pos.any():
        return bins.tolist()
    if n_bins == 2:
        bins[pos] = 1
        return bins.tolist()
    edges = np.quantile(f[pos], np.linspace(0, 1, n_bins)[1:-1])
    bins[pos] = 1 + np.searchsorted(edges, f[pos], side="right")
    return bins.tolist()


def _fewest(counts: np.ndarray, totals: np.ndarray, rng: np.random.Generator) -> int:
    """Fold with the fewest of this stratum, then fewest overall; remaining ties at random."""
    key = counts * (totals.max() + 1) + totals
    best = np.flatnonzero(key == key.min())
    return int(best[rng.integers(best.size)])


def assign_folds(
    rows: list[ManifestRow],
    n_folds: int,
    method: str = "random",
    seed: int = 0,
    strata: list | None = None,
) -> list[int]:
    """One fold in [0, n_folds) per row; rows with an explicit ``fold`` keep it.

    - random: shuffled, balanced fold sizes.
    - stratified: each stratum spread evenly over the folds (``strata`` one value per row, e.g.
      foreground_bins(...) for segmentation; default the rows' class ``target`` for cls).
    - group: rows sharing ``group`` (rows without one are their own group) never split; a
      group with an explicit fold pulls all its rows into it; groups fill the smallest folds
      largest first.
    """
    # why: the three fold methods share the explicit-fold checks and the fold totals computed at the top; split,
    # each would repeat them.
    if method not in FOLD_METHODS:
        raise SegkitError(f"fold method {method!r}: unknown, valid: {', '.join(FOLD_METHODS)}")
    if int(n_folds) < 2:
        raise SegkitError(f"n_folds: must be >= 2 (one fold validates, the rest train), got {n_folds}")
    n_folds = int(n_folds)
    rng = np.random.default_rng(seed)
    folds: list[int | None] = []
    for r in rows:
        if r.fold is not None and not 0 <= r.fold < n_folds:
            raise SegkitError(f"manifest row {r.id!r}: fold {r.fold} outside [0, {n_folds})")
        folds.append(r.fold)
    totals = np.bincount([f for f in folds if f is not None], minlength=n_folds).astype(np.int64)

    if method == "group":
        members: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            members.setdefault(r.group if r.group is not None else f"\0{r.id}\0{i}", []).append(i)
        pending = []
        for name, idx in members.items():
            fixed = {folds[i] for i in idx if folds[i] is not None}
            if len(fixed) > 1:
                raise SegkitError(
                    f"manifest group {name!r}: rows have different explicit folds {sorted(fixed)}"
                )
            if fixed:
                (f,) = fixed
                for i in idx:
                    if folds[i] is None:
                        folds[i] = f
                        totals[f] += 1
            else:
                pending.append(idx)
        order = rng.permutation(len(pending))
        order = sorted(order, key=lambda k: -len(pending[k]))  # stable: random among equal sizes
        for k in order:
            f = _fewest(totals, totals, rng)
            for i in pending[k]:
                folds[i] = f
            totals[f] += len(pending[k])
        return [int(f) for f in folds]

    if method == "stratified":
        if strata is None:
            strata = [r.target for r in rows]
            if any(s is None for s in strata):
                raise SegkitError(
                    "stratified folds: need strata (e.g. foreground_bins of foreground fractions) "
                    "or a class for every manifest row"
                )
        if len(strata) != len(rows):
            raise SegkitError(f"stratified folds: {len(strata)} strata for {len(rows)} rows")
    else:
        strata = [0] * len(rows)
    keys = {s: k for k, s in enumerate(dict.fromkeys(strata))}
    per = np.zeros((len(keys), n_folds), dtype=np.int64)
    for s, f in zip(strata, folds):
        if f is not None:
            per[keys[s], f] += 1
    for i in rng.permutation(len(rows)):
        if folds[i] is None:
            k = keys[strata[i]]
            f = _fewest(per[k], totals, rng)
            folds[i] = f
            per[k, f] += 1
            totals[f] += 1
    return [int(f) for f in folds]
