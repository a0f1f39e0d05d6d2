"""Which manifest rows train and which validate, from the data section of a Config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from segkit.config import Config
from segkit.data.manifest import ManifestRow, assign_folds, manifest_from_folder, read_manifest
from segkit.errors import SegkitError


def sample_manifest_path() -> Path:
    """The bundled nuclei sample's manifest (inside the installed package)."""
    return Path(str(resources.files("segkit") / "sample" / "manifest.csv"))


def load_rows(manifest: str) -> list[ManifestRow]:
    if manifest == "sample":
        return read_manifest(sample_manifest_path())
    path = Path(manifest)
    if path.is_dir():
        return manifest_from_folder(path)
    if not path.exists():
        raise SegkitError(f"{path}: manifest not found (a CSV, a folder with images/ and masks/, or 'sample')")
    return read_manifest(path)


def split_manifest(config: Config) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """(train rows, validation rows) for config.data.val_fold; folds are made when the CSV has none."""
    rows = load_rows(config.data.manifest)
    if not rows:
        raise SegkitError(f"{config.data.manifest}: manifest has no rows")
    folds = assign_folds(rows, config.data.folds, method=config.data.fold_method, seed=config.run.seed)
    val = [row for row, fold in zip(rows, folds) if fold == config.data.val_fold]
    train = [row for row, fold in zip(rows, folds) if fold != config.data.val_fold]
    if not train:
        raise SegkitError(f"{config.data.manifest}: no training rows outside validation fold {config.data.val_fold}")
    unlabeled = [row.id for row in train + val if row.label is None]
    if unlabeled and config.task == "seg":
        raise SegkitError(f"{config.data.manifest}: rows without a label: {', '.join(unlabeled[:5])}")
    return train, val
