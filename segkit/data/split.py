"""Which manifest rows train and which validate.

Fold methods (data.fold_method; explicit ``fold`` cells of the manifest are always kept):
- random: shuffled, balanced folds.
- stratified: segmentation rows binned by foreground fraction (from each row's label
  thumbnail, see segkit.data.grids.foreground_fraction; bin 0 = no foreground), class rows
  by their class, each bin spread evenly over the folds.
- group: rows sharing the manifest's ``group`` never split; rows without a group are grouped
  by image file, so several regions of one slide always land in the same fold.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from segkit.data.classes import class_folder_rows, is_class_folder
from segkit.data.dataset import LabelOptions, SourcePair
from segkit.data.grids import foreground_fraction
from segkit.data.manifest import (
    ManifestRow,
    apply_group_pattern,
    assign_folds,
    foreground_bins,
    manifest_from_folder,
    read_manifest,
)
from segkit.ground.errors import SegkitError

FOREGROUND_BINS = 4  # strata for segmentation: empty + 3 quantile bins of the foreground fraction


def sample_manifest_path(name: str = "sample") -> Path:
    """The bundled nuclei sample's manifest (inside the installed package): "sample" (binary mask)
    or "sample-instances" (the same rows with the nuclei's instance ids)."""
    file = "manifest_instances.csv" if name == "sample-instances" else "manifest.csv"
    return Path(str(resources.files("segkit") / "sample" / file))


def load_rows(manifest: str) -> list[ManifestRow]:
    if manifest in ("sample", "sample-instances"):
        return read_manifest(sample_manifest_path(manifest))
    path = Path(manifest)
    if path.is_dir():
        return class_folder_rows(path) if is_class_folder(path) else manifest_from_folder(path)
    if not path.exists():
        raise SegkitError(f"{path}: manifest not found (a CSV, a folder with images/ and masks/, a folder with "
                          "one sub-folder per class, or 'sample')")
    return read_manifest(path)


@dataclass(frozen=True)
class FoldSpec:
    """How rows are dealt into folds and which fold validates (data.folds, data.fold_method,
    data.val_fold, run.seed and data.group_pattern of a config)."""

    folds: int = 5
    method: str = "random"  # random | stratified | group
    val_fold: int = 0
    seed: int = 42
    group_pattern: Optional[str] = None  # regex over image stems giving rows without a group one (group folds)


def fold_strata(rows: list[ManifestRow], task: str, options: LabelOptions, *, cache=None) -> list[int]:
    """One stratum per row for stratified folds: class label (cls) or foreground-fraction bin (seg)."""
    if task == "cls":  # targets are class ids here (segkit.data.classes.resolve_classes)
        missing = [r.id for r in rows if r.target is None]
        if missing:
            raise SegkitError(
                f"stratified folds: manifest row(s) {', '.join(map(repr, missing[:5]))} have no class "
                "(task cls stratifies by the class column)"
            )
        return [int(r.target) for r in rows]
    fractions = [foreground_fraction(SourcePair(r, options), cache=cache) for r in rows]
    return foreground_bins(fractions, FOREGROUND_BINS)


def make_folds(rows: list[ManifestRow], spec: FoldSpec, *, task: str, options: LabelOptions,
               cache=None) -> list[int]:
    """The fold of every row under ``spec``; ``task`` and ``options`` serve stratification."""
    strata = None
    fold_rows = rows
    if spec.method == "group":
        fold_rows = [dataclasses.replace(r, group=r.group or f"image:{r.image}") for r in rows]
    elif spec.method == "stratified":
        strata = fold_strata(rows, task, options, cache=cache)
    return assign_folds(fold_rows, spec.folds, method=spec.method, seed=spec.seed, strata=strata)


def split_manifest(manifest: str, spec: FoldSpec, *, task: str, options: LabelOptions,
                   cache: Optional[str] = None) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """(train rows, validation rows) for ``spec.val_fold``; folds are made when the CSV has none.

    ``manifest``: a CSV, a folder with images/ + masks/, or "sample". ``cache``: thumbnail cache
    folder for stratified folds (default $SEGKIT_CACHE_DIR or ~/.cache/segkit; 'off' keeps grids
    in memory only).
    """
    rows = apply_group_pattern(load_rows(manifest), spec.group_pattern)
    return split_rows(rows, spec, task=task, options=options, cache=cache, where=str(manifest))


def split_rows(rows: list[ManifestRow], spec: FoldSpec, *, task: str, options: LabelOptions,
               cache: Optional[str] = None, where: str = "manifest") -> tuple[list[ManifestRow], list[ManifestRow]]:
    """split_manifest on rows already read (cls: with class ids resolved); ``where`` names them in errors."""
    manifest = where
    if not rows:
        raise SegkitError(f"{manifest}: manifest has no rows")
    val_fold = spec.val_fold
    if not 0 <= val_fold < spec.folds:
        raise SegkitError(f"config key data.val_fold: {val_fold} outside the {spec.folds} folds (0..{spec.folds - 1})")
    unlabeled = [row.id for row in rows if row.label is None]
    if unlabeled and task != "cls":
        raise SegkitError(f"{manifest}: rows without a label: {', '.join(unlabeled[:5])}")
    folds = make_folds(rows, spec, task=task, options=options, cache=cache)
    val = [row for row, fold in zip(rows, folds) if fold == val_fold]
    train = [row for row, fold in zip(rows, folds) if fold != val_fold]
    if not train:
        raise SegkitError(f"{manifest}: no training rows outside validation fold {val_fold}")
    if not val:
        warnings.warn(f"{manifest}: validation fold {val_fold} has no rows; training without validation",
                      UserWarning, stacklevel=2)
    return train, val
