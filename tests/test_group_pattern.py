"""data.group_pattern: slices of one scan named scanK_sliceNN stay in one fold."""

import numpy as np
import pytest
import tifffile

from segkit.data.manifest import apply_group_pattern, manifest_from_folder
from segkit.data.split import load_rows, make_folds
from segkit.train.from_config import fold_spec, label_options, split_rows
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError


def _scans(root, scans=5, slices=4):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in range(scans):
        for k in range(slices):
            tifffile.imwrite(root / "images" / f"scan{s}_slice{k:02d}.tif", np.zeros((8, 9), np.uint8))
            tifffile.imwrite(root / "masks" / f"scan{s}_slice{k:02d}.tif", np.zeros((8, 9), np.uint8))
    return root


def test_group_pattern_keeps_a_scans_slices_in_one_fold(tmp_path):
    root = _scans(tmp_path / "ct")
    config = load_config(None, [f"data.manifest={root}", "data.fold_method=group", "data.folds=3",
                                r"data.group_pattern=^(scan\d+)_slice"])
    train, val = split_rows(config)
    assert sorted({r.group for r in train + val}) == [f"scan{s}" for s in range(5)]
    assert not {r.group for r in train} & {r.group for r in val}          # no scan on both sides
    rows = apply_group_pattern(load_rows(str(root)), config.data.group_pattern)
    folds = make_folds(rows, fold_spec(config), task="seg", options=label_options(config))
    by_scan = {}
    for row, fold in zip(rows, folds):
        by_scan.setdefault(row.group, set()).add(fold)
    assert all(len(f) == 1 for f in by_scan.values()) and len(set(folds)) == 3
    plain = load_config(None, [f"data.manifest={root}", "data.folds=3"])
    random_folds = make_folds(load_rows(str(root)), fold_spec(plain), task="seg", options=label_options(plain))
    split = sum(len({f for r, f in zip(rows, random_folds) if r.group == g}) > 1 for g in by_scan)
    assert split > 0          # without the pattern, random folds do split scans


def test_group_pattern_without_capture_group_uses_the_match_and_keeps_explicit_groups(tmp_path):
    rows = manifest_from_folder(_scans(tmp_path / "ct", scans=2, slices=2))
    rows[0].group = "mine"
    out = apply_group_pattern(rows, r"scan\d")
    assert [r.group for r in out] == ["mine", "scan0", "scan1", "scan1"]
    assert apply_group_pattern(rows, None) is rows


@pytest.mark.parametrize("overrides, message", [
    (["data.fold_method=group", r"data.group_pattern=^(x\d+"], "data.group_pattern: not a regular expression"),
    ([r"data.group_pattern=^(scan\d+)"], "used by data.fold_method=group only"),
])
def test_bad_group_pattern_is_one_line(overrides, message):
    with pytest.raises(SegkitError, match=message):
        load_config(None, overrides)


def test_a_stem_that_does_not_match_is_named(tmp_path):
    rows = manifest_from_folder(_scans(tmp_path / "ct", scans=1, slices=1))
    with pytest.raises(SegkitError, match=r"scan0_slice00.tif: file name 'scan0_slice00' does not match"):
        apply_group_pattern(rows, r"^patient")
