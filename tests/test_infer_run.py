"""`segkit infer` through the CLI: background skipping, context margin, TTA, epoch/run ensembles,
weight soup and georeferenced polygons (reusing the session's tiny trained run)."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from segkit.cli import cli
from segkit.runs.rundir import read_run_info


def infer(*args, expect=0):
    result = CliRunner().invoke(cli, ["infer", *[str(a) for a in args]])
    assert result.exit_code == expect, result.output
    return result


def rle_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def sparse_image(module_tmp, project):
    """200x300: the project's noisy discs in the top-left 90x133 corner, 0 (background) elsewhere."""
    path = module_tmp("sparse") / "sparse.tif"
    image = np.zeros((200, 300), np.uint8)
    image[:90, :133] = tifffile.imread(project / "img0.tif")
    tifffile.imwrite(path, image, tile=(32, 32))
    return path


def test_skip_background_gives_zero_there_and_the_same_prediction_elsewhere(tmp_path, trained, sparse_image):
    common = ["--run", trained, "--epochs", 2, "--tta", "none", "--set", "infer.tissue=otsu", sparse_image]
    infer("--probs", tmp_path / "all.tif", "--mask", tmp_path / "all_mask.tif", *common)
    result = infer("--probs", tmp_path / "skip.tif", "--mask", tmp_path / "skip_mask.tif", "--skip-background", *common)
    full, skipped = tifffile.imread(tmp_path / "all.tif"), tifffile.imread(tmp_path / "skip.tif")
    assert full.shape == skipped.shape == (200, 300)
    far = np.ones(full.shape, bool)
    far[:90 + 48, :133 + 48] = False  # more than one tile (fov 48) away from the content
    assert full[far].max() > 0  # the model does predict something on the empty area...
    assert skipped[far].max() == 0  # ...which skipping turns into 0 without running those tiles
    assert not tifffile.imread(tmp_path / "skip_mask.tif")[far].any()
    # where tiles ran, the same probabilities (tiles next to skipped ones blend with fewer neighbours)
    near = (slice(0, 90 - 16), slice(0, 133 - 16))
    np.testing.assert_array_equal(skipped[near], full[near])
    mask_all, mask_skip = tifffile.imread(tmp_path / "all_mask.tif"), tifffile.imread(tmp_path / "skip_mask.tif")
    assert mask_skip[:90, :133].any()
    assert (mask_all[:90, :133] != mask_skip[:90, :133]).mean() < 0.01
    assert "wrote" in result.output


def test_context_margin_is_wired_and_keeps_the_image_size(tmp_path, trained, project):
    image = project / "img1.tif"
    infer("--run", trained, "--epochs", 2, "--tta", "none", "--probs", tmp_path / "m0.tif", image)
    infer("--run", trained, "--epochs", 2, "--tta", "none", "--probs", tmp_path / "m8.tif", "--margin", 8, image)
    plain, margin = tifffile.imread(tmp_path / "m0.tif"), tifffile.imread(tmp_path / "m8.tif")
    assert plain.shape == margin.shape == tifffile.imread(image).shape
    assert (plain != margin).any()  # tiles read 8 px of context each side: a different prediction
    result = infer("--run", trained, "--probs", tmp_path / "bad.tif", "--margin", 24, image, expect=1)
    assert "margin_px: 24" in result.output and not (tmp_path / "bad.tif").exists()


def test_best_epoch_equals_that_epoch_and_d4_tta_runs(tmp_path, trained, project):
    best = read_run_info(trained)["best_epoch"]
    image = project / "img0.tif"
    result = infer("--run", trained, "--epochs", "best", "--tta", "d4", "--rle", tmp_path / "best.csv", image)
    assert "tta d4" in result.output and "1 model(s)" in result.output
    infer("--run", trained, "--epochs", best, "--tta", "d4", "--rle", tmp_path / "n.csv", image)
    assert rle_rows(tmp_path / "best.csv") == rle_rows(tmp_path / "n.csv")
    assert [row[0] for row in rle_rows(tmp_path / "best.csv")] == ["id", "img0"]


def test_soup_of_one_checkpoint_is_that_checkpoint_and_soup_makes_one_model(tmp_path, trained, project):
    image = project / "img0.tif"
    infer("--run", trained, "--epochs", 2, "--tta", "none", "--probs", tmp_path / "one.tif", image)
    infer("--run", trained, "--epochs", 2, "--soup", "--tta", "none", "--probs", tmp_path / "soup1.tif", image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one.tif"), tifffile.imread(tmp_path / "soup1.tif"))
    result = infer("--run", trained, "--epochs", "last:2", "--soup", "--tta", "none", "--rle", tmp_path / "s.csv",
                   image)
    assert "1 model(s)" in result.output
    assert result.output.count(".pt") == 2  # both checkpoints went into the soup


# Two different runs averaged, one weight per run: tests/test_cli_effects.py.


def test_polygons_of_a_georeferenced_image_land_at_the_map_position(tmp_path, trained, project):
    import rasterio  # a core dependency: a broken import must fail here, not skip
    from rasterio.transform import from_origin

    data = tifffile.imread(project / "img0.tif")
    transform = from_origin(500000.0, 4600000.0, 0.5, 0.5)
    geo = tmp_path / "geo.tif"
    with rasterio.open(geo, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=1,
                       dtype="uint8", crs="EPSG:32633", transform=transform) as dst:
        dst.write(data, 1)
    infer("--run", trained, "--epochs", 2, "--tta", "none", "--polygons", tmp_path / "p.geojson", "--mask", tmp_path / "m.tif", geo)
    collection = json.loads((tmp_path / "p.geojson").read_text())
    assert "32633" in json.dumps(collection.get("crs"))
    with rasterio.open(tmp_path / "m.tif") as mask_ds:
        assert mask_ds.crs.to_epsg() == 32633 and mask_ds.transform == transform
        mask = mask_ds.read(1)
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=4)
    assert len(collection["features"]) == n - 1 > 0
    boxes = set()
    for x, y, w, h, _ in stats[1:]:  # component bbox in pixels -> map bounds (x right, y down the rows)
        west, north = transform @ (x, y)
        east, south = transform @ (x + w, y + h)
        boxes.add((round(west, 6), round(south, 6), round(east, 6), round(north, 6)))
    for feature in collection["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        bounds = (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max())
        assert tuple(round(float(v), 6) for v in bounds) in boxes
        assert 500000.0 <= bounds[0] < bounds[2] <= 500000.0 + 0.5 * data.shape[1]
        assert 4600000.0 - 0.5 * data.shape[0] <= bounds[1] < bounds[3] <= 4600000.0


def test_each_run_weighs_the_same_whatever_its_checkpoint_count(tmp_path, trained):
    """Two runs, one with two checkpoints and one with one: 1/4, 1/4 and 1/2, not 1/3 each."""
    import torch

    from segkit.infer.run import load_ensemble

    single = tmp_path / "single"
    shutil.copytree(trained, single)
    (single / "checkpoints" / "epoch_0001.pt").unlink()
    ensemble = load_ensemble([trained, single], "last:2", torch.device("cpu"))
    assert [p.parent.parent.name for p in ensemble.checkpoints] == [trained.name, trained.name, "single"]
    assert [w for _, w in ensemble.models] == pytest.approx([0.25, 0.25, 0.5])
