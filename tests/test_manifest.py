"""Manifest CSV, folder convention and fold assignment, including every bad-input message."""

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from segkit.data.manifest import (
    ManifestRow,
    assign_folds,
    foreground_bins,
    manifest_from_folder,
    read_manifest,
    write_manifest,
)
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window


def _image(path: Path, h=13, w=17):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (np.arange(h * w * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, img)
    else:
        assert cv2.imwrite(str(path), img)
    return path


def _mask(path: Path, h=13, w=17):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:11] = 1
    assert cv2.imwrite(str(path), m)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- read


def test_read_manifest_all_columns(tmp_path):
    _image(tmp_path / "imgs" / "a.tif")
    _image(tmp_path / "imgs" / "b.png")
    _mask(tmp_path / "masks" / "a.png")
    (tmp_path / "train.csv").write_text("id,rle\na,1 3\n")
    csv_path = _write(
        tmp_path / "m.csv",
        "image,label,class,group,region,fold,id\n"
        "imgs/a.tif,masks/a.png,1,p1,\"2, 3, 8, 9\",0,\n"
        "\n"
        f"{tmp_path / 'imgs' / 'b.png'},train.csv,,,,,bee\n",
    )
    rows = read_manifest(csv_path)
    assert rows == [
        ManifestRow("a", tmp_path / "imgs" / "a.tif", str(tmp_path / "masks" / "a.png"), 1, "p1",
                    Window(2, 3, 8, 9), 0),
        ManifestRow("bee", tmp_path / "imgs" / "b.png", str(tmp_path / "train.csv"), None, None, None, None),
    ]


def test_write_then_read_round_trip(tmp_path):
    _image(tmp_path / "data" / "x y.tif")
    _mask(tmp_path / "data" / "x y_mask.png")
    rows = [
        ManifestRow("x", tmp_path / "data" / "x y.tif", str(tmp_path / "data" / "x y_mask.png"), 2, "g,1",
                    Window(0, 1, 5, 6), 3),
        ManifestRow("y", tmp_path / "data" / "x y.tif"),
    ]
    out = write_manifest(rows, tmp_path / "runs" / "manifest.csv")
    assert "../data/x y.tif" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["manifest.csv"]  # no temp file left
    assert read_manifest(out) == rows


@pytest.mark.parametrize(
    "body,pattern",
    [
        ("image\nimgs/a.tif\nimgs/missing.tif\n", r"m\.csv:3: image file 'imgs/missing.tif' not found"),
        ("image,label\nimgs/a.tif,nolabel.png\n", r"m\.csv:2: label file 'nolabel.png' not found"),
        ("image,clas\nimgs/a.tif,1\n", r"m\.csv: unknown column 'clas' \(did you mean 'class'\?\)"),
        ("label\nimgs/a.tif\n", r"m\.csv: no 'image' column"),
        ("image,region\nimgs/a.tif,\"1,2,3\"\n", r"m\.csv:2: region '1,2,3' must be"),
        ("image,region\nimgs/a.tif,\"1,2,0,4\"\n", r"m\.csv:2: region"),
        ("image,fold\nimgs/a.tif,x\n", r"m\.csv:2: fold 'x' is not an integer"),
        ("image,fold\nimgs/a.tif,-1\n", r"m\.csv:2: fold -1 must be >= 0"),
        ("image,class\nimgs/a.tif,-3\n", r"m\.csv:2: class -3 must be >= 0"),
        ("image,id\nimgs/a.tif,s\nimgs/a.tif,s\n", r"m\.csv:3: id 's' repeats line 2"),
        ("image\nimgs/a.tif,extra\n", r"m\.csv:2: more cells than header"),
        ("image\n", r"m\.csv: manifest has no rows"),
        ("", r"m\.csv: empty manifest"),
        ("image,label\n,x\n", r"m\.csv:2: empty image cell"),
    ],
)
def test_read_manifest_errors_name_line_and_file(tmp_path, body, pattern):
    _image(tmp_path / "imgs" / "a.tif")
    with pytest.raises(SegkitError, match=pattern) as info:
        read_manifest(_write(tmp_path / "m.csv", body))
    assert "\n" not in str(info.value)


def test_read_manifest_missing_csv(tmp_path):
    with pytest.raises(SegkitError, match="nope.csv: cannot read manifest"):
        read_manifest(tmp_path / "nope.csv")


# ---------------------------------------------------------------- folder


def test_manifest_from_folder_matches_stems(tmp_path):
    _image(tmp_path / "images" / "s1.tif")
    _image(tmp_path / "images" / "s2.ome.tif")
    _image(tmp_path / "images" / "s3.png")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    _mask(tmp_path / "masks" / "s1.png")
    _mask(tmp_path / "masks" / "s2_mask.png")
    (tmp_path / "masks" / "s3.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    rows = manifest_from_folder(tmp_path)
    assert [(r.id, r.image.name, Path(r.label).name) for r in rows] == [
        ("s1", "s1.tif", "s1.png"),
        ("s2", "s2.ome.tif", "s2_mask.png"),
        ("s3", "s3.png", "s3.geojson"),
    ]


def test_manifest_from_folder_without_masks_and_errors(tmp_path):
    _image(tmp_path / "images" / "a.tif")
    _image(tmp_path / "images" / "b.tif")
    assert [(r.id, r.label) for r in manifest_from_folder(tmp_path)] == [("a", None), ("b", None)]
    _mask(tmp_path / "masks" / "a.png")
    with pytest.raises(SegkitError, match=r"masks: no mask for image\(s\) b.tif"):
        manifest_from_folder(tmp_path)
    _mask(tmp_path / "masks" / "b.png")
    assert [Path(r.label).name for r in manifest_from_folder(tmp_path)] == ["a.png", "b.png"]
    _mask(tmp_path / "masks" / "c.png")
    with pytest.raises(SegkitError, match=r"c.png: no image in .*images with stem 'c'"):
        manifest_from_folder(tmp_path)
    (tmp_path / "masks" / "c.png").unlink()
    _mask(tmp_path / "masks" / "a_mask.png")
    with pytest.raises(SegkitError, match="already has mask"):
        manifest_from_folder(tmp_path)
    with pytest.raises(SegkitError, match="no images/ folder"):
        manifest_from_folder(tmp_path / "masks")


# ---------------------------------------------------------------- folds


def _rows(n, groups=None, targets=None, folds=None):
    return [
        ManifestRow(
            id=f"r{i}", image=Path(f"r{i}.tif"),
            group=None if groups is None else groups[i],
            target=None if targets is None else targets[i],
            fold=None if folds is None else folds[i],
        )
        for i in range(n)
    ]


def test_random_folds_balanced_seeded_and_keep_explicit():
    rows = _rows(23, folds=[None] * 20 + [4, 4, 0])
    f1 = assign_folds(rows, 5, "random", seed=1)
    assert f1 == assign_folds(rows, 5, "random", seed=1)
    assert f1 != assign_folds(rows, 5, "random", seed=2)
    assert f1[20:] == [4, 4, 0]
    counts = np.bincount(f1, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_group_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = [f"p{int(g)}" for g in rng.integers(0, 12, size=60)]
    groups[5] = None  # ungrouped row: its own group
    rows = _rows(60, groups=groups, folds=[None] * 59 + [2])
    folds = assign_folds(rows, 4, "group", seed=3)
    by_group: dict[str, set] = {}
    for r, f in zip(rows, folds):
        if r.group is not None:
            by_group.setdefault(r.group, set()).add(f)
    assert all(len(fs) == 1 for fs in by_group.values())
    assert by_group[groups[59]] == {2}  # explicit fold pulls the whole group
    sizes = np.bincount(folds, minlength=4)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= max(Counter(groups).values())


def test_group_folds_conflicting_explicit_folds():
    rows = _rows(3, groups=["g", "g", "h"], folds=[0, 1, None])
    with pytest.raises(SegkitError, match="group 'g'.*different explicit folds"):
        assign_folds(rows, 3, "group")


def test_stratified_folds_balance_each_stratum():
    targets = [0] * 40 + [1] * 17 + [2] * 6
    rows = _rows(len(targets), targets=targets)
    folds = assign_folds(rows, 5, "stratified", seed=0)
    for t in (0, 1, 2):
        per = np.bincount([f for f, s in zip(folds, targets) if s == t], minlength=5)
        assert per.max() - per.min() <= 1, (t, per)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    # explicit strata (foreground bins) override the class labels
    fractions = [0.0] * 20 + list(np.linspace(0.01, 0.5, 43))
    strata = foreground_bins(fractions, 4)
    folds = assign_folds(rows, 5, "stratified", seed=0, strata=strata)
    for b in set(strata):
        per = np.bincount([f for f, s in zip(folds, strata) if s == b], minlength=5)
        assert per.max() - per.min() <= 1


def test_foreground_bins():
    assert foreground_bins([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0], 4) == [0, 1, 1, 2, 2, 3, 3, 0]
    assert foreground_bins([0, 0.5, 0.0], 2) == [0, 1, 0]
    assert foreground_bins([0, 0], 3) == [0, 0]


def test_fold_errors():
    with pytest.raises(SegkitError, match="stratified folds: need strata"):
        assign_folds(_rows(4), 2, "stratified")
    with pytest.raises(SegkitError, match="fold method 'kfold'"):
        assign_folds(_rows(4), 2, "kfold")
    with pytest.raises(SegkitError, match="n_folds"):
        assign_folds(_rows(4), 1)
    with pytest.raises(SegkitError, match="row 'r1': fold 5 outside"):
        assign_folds(_rows(2, folds=[0, 5]), 3)
