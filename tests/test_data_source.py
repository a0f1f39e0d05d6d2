"""split_manifest folds (stratified, grouped, explicit) and the real `segkit train` on every label
source kind: training runs, and each bad input stopped before training with a one-line error."""

import csv
import json
import re
import shutil
import warnings

import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner
from rasterio.transform import from_origin

from segkit.cli import cli
from segkit.data.manifest import foreground_bins
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError
from segkit.io import rle
from segkit.train.from_config import split_rows

H, W = 45, 61
TRANSFORM = from_origin(500000, 4600000, 0.5, 0.5)
CRS = "EPSG:32633"
BOXES = {"a": [(5, 8, 14, 20), (30, 40, 12, 15)], "b": [(0, 0, 10, 12), (20, 30, 25, 20)]}  # row, col, h, w


pytestmark = pytest.mark.usefixtures("own_cache")


def _write_manifest(path, rows):
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _config(manifest, *extra):
    return load_config(None, [f"data.manifest={manifest}", *extra])


# ---------------------------------------------------------------- folds


def _seg_rows(root, fractions):
    """One tiny image + mask per fraction: the first round(f * 40) rows of a 40x30 mask labelled."""
    rows = []
    for i, f in enumerate(fractions):
        mask = np.zeros((40, 30), np.uint8)
        mask[: int(round(f * 40))] = 1
        image = np.where(mask[..., None] > 0, 200, 60).astype(np.uint8).repeat(3, -1)
        tifffile.imwrite(root / f"im{i}.tif", image)
        tifffile.imwrite(root / f"im{i}_m.tif", mask)
        rows.append({"id": f"im{i}", "image": f"im{i}.tif", "label": f"im{i}_m.tif"})
    return rows


def test_stratified_segmentation_folds_spread_each_foreground_bin(tmp_path):
    fractions = [0, 0, 0, 0.1, 0.125, 0.15, 0.4, 0.45, 0.5, 0.8, 0.85, 0.9]
    manifest = _write_manifest(tmp_path / "m.csv", _seg_rows(tmp_path, fractions))
    strata = dict(zip([f"im{i}" for i in range(12)], foreground_bins(fractions, 4)))
    assert sorted(set(strata.values())) == [0, 1, 2, 3]
    folds = {}
    for k in range(3):
        train, val = split_rows(_config(manifest, "data.folds=3", "data.fold_method=stratified", f"data.val_fold={k}"))
        assert len(train) + len(val) == 12
        for row in val:
            folds[row.id] = k
    assert len(folds) == 12
    for s in range(4):  # each stratum of 3 rows: one row in each fold
        assert sorted(folds[i] for i in folds if strata[i] == s) == [0, 1, 2]
    assert any((tmp_path / "cache" / "thumbs").glob("foreground-*.npz"))  # fractions came from cached grids


def test_stratified_classification_folds_follow_the_class(tmp_path):
    rows = _seg_rows(tmp_path, [0.5] * 8)
    for i, r in enumerate(rows):
        r["class"] = i % 2
        r.pop("label")
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    train, val = split_rows(_config(manifest, "task=cls", "data.folds=4", "data.fold_method=stratified"))
    assert len(val) == 2 and sorted(r.target for r in val) == [0, 1]
    rows[3]["class"] = ""
    _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(SegkitError, match=r"row\(s\) 'im3' have no class"):
        split_rows(_config(manifest, "task=cls", "data.folds=4", "data.fold_method=stratified"))


def test_group_folds_keep_groups_and_regions_of_one_image_together(tmp_path):
    rows = _seg_rows(tmp_path, [0.5] * 6)
    for i, r in enumerate(rows):
        r["group"] = f"patient{i // 2}"
    # three regions of one more image, no group: they share the image file, so one fold
    tifffile.imwrite(tmp_path / "big.tif", np.full((40, 90, 3), 90, np.uint8))
    tifffile.imwrite(tmp_path / "big_m.tif", np.ones((40, 90), np.uint8))
    for k in range(3):
        rows.append({"id": f"big{k}", "image": "big.tif", "label": "big_m.tif", "region": f"0,{30 * k},40,30"})
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    fold_of = {}
    for k in range(3):
        _, val = split_rows(_config(manifest, "data.folds=3", "data.fold_method=group", f"data.val_fold={k}"))
        fold_of.update({r.id: k for r in val})
    assert len(fold_of) == 9
    for p in range(3):
        assert fold_of[f"im{2 * p}"] == fold_of[f"im{2 * p + 1}"]
    assert fold_of["big0"] == fold_of["big1"] == fold_of["big2"]


@pytest.mark.parametrize("method", ["random", "stratified", "group"])
def test_explicit_folds_are_kept(tmp_path, method):
    rows = _seg_rows(tmp_path, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    rows[0]["fold"], rows[5]["fold"] = 2, 2
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    _, val = split_rows(_config(manifest, "data.folds=3", f"data.fold_method={method}", "data.val_fold=2"))
    assert {"im0", "im5"} <= {r.id for r in val}


def test_validation_fold_outside_the_folds_and_empty_folds(tmp_path):
    manifest = _write_manifest(tmp_path / "m.csv", [{**r, "fold": 0} for r in _seg_rows(tmp_path, [0.2, 0.5])])
    with pytest.raises(SegkitError, match="data.val_fold: 5 outside the 5 folds"):
        split_rows(_config(manifest, "data.val_fold=5"))
    with pytest.raises(SegkitError, match="no training rows outside validation fold 0"):
        split_rows(_config(manifest))
    with pytest.warns(UserWarning, match="validation fold 1 has no rows"):
        train, val = split_rows(_config(manifest, "data.val_fold=1"))
    assert len(train) == 2 and val == []


# ---------------------------------------------------------------- the real CLI


def _boxes_mask(boxes):
    m = np.zeros((H, W), np.uint8)
    for r, c, h, w in boxes:
        m[r:r + h, c:c + w] = 1
    return m


def _geotiff(path, image, crs=CRS):
    with rasterio.open(path, "w", driver="GTiff", height=image.shape[0], width=image.shape[1], count=3,
                       dtype="uint8", crs=crs, transform=TRANSFORM) as dst:
        dst.write(image.transpose(2, 0, 1))


def _polygon(r, c, h, w):
    ring = [(c, r), (c + w, r), (c + w, r + h), (c, r + h), (c, r)]
    return {"type": "Polygon", "coordinates": [[list(TRANSFORM @ p) for p in ring]]}


def _geojson(path, boxes, crs=CRS):
    features = [{"type": "Feature", "properties": {}, "geometry": _polygon(*b)} for b in boxes]
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                                "features": features}))


@pytest.fixture(scope="module")
def data(module_tmp):
    """Two GeoTIFFs (train a, validate b) with the same boxes as mask rasters, one RLE CSV and
    GeoJSON polygons in the image CRS; and a images/ + masks/ folder of PNGs."""
    root = module_tmp("data")
    rng = np.random.default_rng(0)
    (root / "folder" / "images").mkdir(parents=True)
    (root / "folder" / "masks").mkdir()
    import cv2

    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "rle"])
        for name, boxes in BOXES.items():
            mask = _boxes_mask(boxes)
            image = np.clip(rng.normal(70, 10, (H, W, 3)) + 110 * mask[..., None], 0, 255).astype(np.uint8)
            _geotiff(root / f"{name}.tif", image)
            tifffile.imwrite(root / f"{name}_mask.tif", mask)
            writer.writerow([name, rle.encode(mask)])
            _geojson(root / f"{name}.geojson", boxes)
            cv2.imwrite(str(root / "folder" / "images" / f"{name}.png"), image)
            cv2.imwrite(str(root / "folder" / "masks" / f"{name}.png"), mask * 255)
    for kind, label in (("mask", "{}_mask.tif"), ("rle", "labels.csv"), ("polygons", "{}.geojson")):
        _write_manifest(root / f"{kind}.csv", [
            {"id": n, "image": f"{n}.tif", "label": label.format(n), "fold": k} for k, n in enumerate(BOXES)])
    return root


FAST = ["data.size=32", "data.stats_windows=4", "data.folds=2", "data.val_fold=1", "train.epochs=1",
        "train.windows_per_epoch=8", "train.batch_size=8", "model.arch=FPN", "train.amp=false", "run.progress=false",
        "infer.overlap_px=8", "infer.batch_size=4", "infer.tta=none"]


def _train(manifest, runs, *extra):
    args = ["train", "--set", f"data.manifest={manifest}", "--set", f"run.runs_dir={runs}"]
    for item in FAST + list(extra):
        args += ["--set", item]
    return CliRunner().invoke(cli, args)


def test_cli_trains_from_every_label_source_kind_with_identical_results(data, tmp_path):
    records = {}
    for kind in ("mask", "rle", "polygons"):
        result = _train(data / f"{kind}.csv", tmp_path / "runs", f"run.name={kind}", "data.foreground_share=0")
        assert result.exit_code == 0, result.output
        run = tmp_path / "runs" / kind
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
        assert (run / "checkpoints" / "epoch_0001.pt").exists()
        (records[kind],) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # one GeoTIFF (rasterio, with a CRS), three label sources of the same boxes: the same windows,
    # masks and so the same training and validation, number for number
    for kind in ("rle", "polygons"):
        assert records[kind]["train_loss"] == pytest.approx(records["mask"]["train_loss"], rel=1e-6)
        assert records[kind]["val_dice"] == pytest.approx(records["mask"]["val_dice"], rel=1e-6)
    assert np.isfinite(records["mask"]["train_loss"]) and 0 <= records["mask"]["val_dice"] <= 1


def test_cli_trains_from_an_images_and_masks_folder(data, tmp_path):
    result = _train(data / "folder", tmp_path / "runs", "run.name=folder")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "runs" / "folder" / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(record["train_loss"]) and "val_dice" in record


def _bad_manifest(root, row):
    """The bad row trains (fold 0); a good row validates, so nothing else has anything to say."""
    good = {"id": "ok", "image": "a.tif", "label": "a_mask.tif", "fold": 1}
    return _write_manifest(root / "m.csv", [{**row, "fold": 0}, good])


def _case_missing_image(root):
    _bad_manifest(root, {"image": "gone.tif", "label": "a_mask.tif"})
    return root / "m.csv", [], r"m\.csv:2: image file 'gone\.tif' not found"


def _case_missing_label(root):
    _bad_manifest(root, {"image": "a.tif", "label": "gone.png"})
    return root / "m.csv", [], r"m\.csv:2: label file 'gone\.png' not found"


def _case_unreadable_image(root):
    (root / "broken.tif").write_bytes(b"II*\x00" + b"\x07" * 64)
    _bad_manifest(root, {"image": "broken.tif", "label": "a_mask.tif"})
    return root / "m.csv", [], r"broken\.tif: cannot read image"


def _case_label_size(root):
    tifffile.imwrite(root / "small_mask.tif", np.ones((H - 1, W), np.uint8))
    _bad_manifest(root, {"image": "a.tif", "label": "small_mask.tif"})
    return root / "m.csv", [], rf"small_mask\.tif: label size {H - 1}x{W} differs from image .*a\.tif size {H}x{W}"


def _rle_case(root, text):
    (root / "bad.csv").write_text(f"id,rle\na,{text}\n")
    _bad_manifest(root, {"id": "a", "image": "a.tif", "label": "bad.csv"})
    return root / "m.csv"


def _case_rle_past_the_image(root):
    return _rle_case(root, f"1 5 {H * W - 2} 9"), [], rf"bad\.csv: id a \(image .*\): rle: run '{H * W - 2} 9' ends at pixel .* past"


def _case_rle_odd_count(root):
    return _rle_case(root, "1 5 20"), [], r"bad\.csv: line 2 \(id a\): rle: odd number of values \(3\)"


def _case_polygons_outside(root):
    _geojson(root / "far.geojson", [(H + 100, W + 100, 10, 10)])
    _bad_manifest(root, {"image": "a.tif", "label": "far.geojson"})
    return root / "m.csv", [], r"far\.geojson: all 1 polygons lie outside image .*a\.tif"


def _case_bad_crs(root):
    _geojson(root / "crs.geojson", BOXES["a"], crs="EPSG:999999")
    _bad_manifest(root, {"image": "a.tif", "label": "crs.geojson"})
    return root / "m.csv", [], r"crs\.geojson: cannot transform polygons from CRS 'EPSG:999999'"


def _case_crs_polygons_on_a_plain_image(root):
    tifffile.imwrite(root / "plain.tif", np.full((H, W, 3), 90, np.uint8))
    _geojson(root / "a.geojson", BOXES["a"])
    _bad_manifest(root, {"image": "plain.tif", "label": "a.geojson"})
    return root / "m.csv", [], r"a\.geojson: polygons are in CRS coordinates \(EPSG:32633\) but image .*plain\.tif"


def _case_rle_id_missing(root):
    (root / "other.csv").write_text("id,rle\nzzz,1 5\n")
    _bad_manifest(root, {"id": "a", "image": "a.tif", "label": "other.csv"})
    return root / "m.csv", [], r"other\.csv: no row with id 'a' \(image .*a\.tif\)"


def _case_no_usable_area(root):
    tifffile.imwrite(root / "blank.tif", np.full((H, W, 3), 230, np.uint8))
    _write_manifest(root / "m.csv", [{"image": "blank.tif", "label": "a_mask.tif", "fold": 0},
                                     {"image": "a.tif", "label": "a_mask.tif", "fold": 1}])
    return root / "m.csv", ["data.tissue=otsu"], r"manifest row 'blank' \(.*blank\.tif\): no usable area"


def _case_region_outside(root):
    _bad_manifest(root, {"image": "a.tif", "label": "a_mask.tif", "region": f"{H},0,5,5"})
    return root / "m.csv", [], rf"manifest row 'a' \(.*a\.tif\): region {H},0,5,5 lies outside"


def _case_folder_without_mask(root):
    (root / "f" / "images").mkdir(parents=True)
    (root / "f" / "masks").mkdir()
    for name in ("x", "y"):
        tifffile.imwrite(root / "f" / "images" / f"{name}.tif", np.ones((8, 8), np.uint8))
    tifffile.imwrite(root / "f" / "masks" / "x.tif", np.ones((8, 8), np.uint8))
    return root / "f", [], r"masks: no mask for image\(s\) y\.tif"


CASES = [_case_missing_image, _case_missing_label, _case_unreadable_image, _case_label_size,
         _case_rle_past_the_image, _case_rle_odd_count, _case_rle_id_missing, _case_polygons_outside,
         _case_bad_crs, _case_crs_polygons_on_a_plain_image, _case_no_usable_area, _case_region_outside,
         _case_folder_without_mask]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_bad_input_stops_before_training_with_one_line(data, tmp_path, case):
    for name in ("a.tif", "a_mask.tif"):
        shutil.copy(data / name, tmp_path / name)
    manifest, extra, message = case(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(manifest, tmp_path / "runs", *extra)
    assert not [w for w in caught if issubclass(w.category, UserWarning)]  # they would print more lines
    assert result.exit_code != 0
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing started
