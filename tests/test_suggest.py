"""`segkit suggest`: region scores, picks, the QuPath file, the manifest rows back into training; `segkit pseudo`."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from qupath_import import read_qupath_objects

from segkit.cli import cli
from segkit.data.manifest import read_manifest
from segkit.ground.geometry import Window
from segkit.ground.ignore import IGNORE_INDEX
from segkit.infer.members import ScoreGrid, UncertaintyPredictor, score_channels
from segkit.infer.predict import predict_strips
from segkit.io.images.raster import open_raster
from segkit.workflows.picks import Candidate, candidates, k_centre, overlaps, pick_apart
from segkit.workflows.pseudo import pseudo_strip


class Channel(torch.nn.Module):
    """A model whose logits are one input channel: the image is the logit map."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, self.channel:self.channel + 1]


def _score_map(path, models, score, cell=8, region=32):
    raster = open_raster(path)
    grid = ScoreGrid(raster.height, raster.width, cell)
    predictor = UncertaintyPredictor(models, "none", activation="sigmoid")
    for row0, strip in predict_strips(predictor, raster, fov_px=32, size=32, overlap_px=8,
                                      preprocess=lambda raw: raw.astype(np.float32), batch_size=4):
        assert strip.shape[0] == 3  # mean probability, entropy, disagreement
        grid.add(row0, strip[-2:])
    means = grid.mean()[score_channels(score)].mean(axis=0)
    return candidates(means, np.ones(means.shape), image=0, cell_px=cell, region_px=region,
                      height=raster.height, width=raster.width, min_usable=0.5)


def test_a_known_uncertain_square_is_picked_first(tmp_path):
    logits = np.full((100, 140), -4.0, np.float32)  # confident background everywhere ...
    logits[40:72, 80:112] = 0.0  # ... but p = 0.5 here
    logits[8:24, 8:24] = 0.5  # a smaller, less unsure patch
    tifffile.imwrite(tmp_path / "logits.tif", logits)
    pool = _score_map(tmp_path / "logits.tif", [(Channel(0), 1.0)], "entropy")
    first, second = pick_apart(pool, 2, {})
    assert first.window == Window(40, 80, 32, 32) and first.score > 0.99
    assert overlaps(second.window, Window(8, 8, 16, 16)) and second.score < first.score


def test_disagreement_finds_where_members_disagree_not_where_both_are_unsure(tmp_path):
    a = np.full((96, 128), -4.0, np.float32)
    b = a.copy()
    a[0:32, 0:32] = b[0:32, 0:32] = 0.0  # both unsure: high entropy, no disagreement
    a[64:96, 96:128], b[64:96, 96:128] = 6.0, -6.0  # each sure, of opposite answers
    tifffile.imwrite(tmp_path / "two.tif", np.stack([a, b], axis=-1), photometric="minisblack", planarconfig="contig")
    models = [(Channel(0), 1.0), (Channel(1), 1.0)]
    best = pick_apart(_score_map(tmp_path / "two.tif", models, "disagreement"), 1, {})[0]
    assert best.window == Window(64, 96, 32, 32) and best.score > 0.9
    ranked = sorted(_score_map(tmp_path / "two.tif", models, "entropy"), key=lambda c: -c.score)
    assert {ranked[0].window, ranked[1].window} <= {Window(0, 0, 32, 32), Window(64, 96, 32, 32)}


def test_score_grid_holds_cell_means_whatever_the_strips():
    rng = np.random.default_rng(0)
    scores = rng.random((2, 37, 53))
    grid = ScoreGrid(37, 53, 8)
    row = 0
    for height in (5, 11, 3, 18):
        grid.add(row, scores[:, row:row + height])
        row += height
    expected = np.array([[[scores[c, r:r + 8, k:k + 8].mean() for k in range(0, 53, 8)] for r in range(0, 37, 8)]
                         for c in range(2)])
    assert np.allclose(grid.mean(), expected)


def test_picks_never_overlap_each_other_or_a_labelled_region():
    rng = np.random.default_rng(3)
    pool = [Candidate(int(rng.integers(2)), Window(int(rng.integers(0, 200)), int(rng.integers(0, 200)), 40, 40),
                      float(rng.random()), 1.0) for _ in range(400)]
    taken = {0: [Window(50, 50, 60, 60)], 1: [Window(0, 0, 100, 100)]}
    picks = pick_apart(pool, 12, taken)
    assert len(picks) == 12 and [p.score for p in picks] == sorted((p.score for p in picks), reverse=True)
    for i, p in enumerate(picks):
        assert not any(overlaps(p.window, w) for w in taken[p.image])
        assert not any(p.image == q.image and overlaps(p.window, q.window) for q in picks[i + 1:])


def test_k_centre_spreads_picks_over_clusters():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.eye(3) * 10, 20, axis=0) + rng.normal(0, 0.1, (60, 3))
    chosen = k_centre(clusters, 3, first=0)
    assert sorted(i // 20 for i in chosen) == [0, 1, 2]
    labelled = np.array([[10.0, 0, 0], [0, 10.0, 0]])  # two clusters already labelled: the third comes first
    assert k_centre(clusters, 1, centres=labelled)[0] // 20 == 2


def test_pseudo_strip_keeps_confident_pixels_only():
    probs = np.array([[[0.05, 0.1, 0.11, 0.5, 0.89, 0.9, 0.99]]], np.float32)
    assert pseudo_strip(probs, 0.1, 0.9).tolist() == [[0, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 1, 1]]
    multi = np.array([[[0.95, 0.4]], [[0.03, 0.35]], [[0.02, 0.25]]], np.float32)
    assert pseudo_strip(multi, 0.1, 0.9).tolist() == [[0, IGNORE_INDEX]]


@pytest.fixture(scope="module")
def suggested(trained, module_tmp):
    """suggest on an unlabelled copy of the project's training image and on that image itself."""
    project = trained.parent.parent
    root = module_tmp("suggest")
    shutil.copy(project / "img0.tif", root / "new.tif")
    result = CliRunner().invoke(cli, ["suggest", "-r", str(trained), str(root / "new.tif"), str(project / "img0.tif"),
                                      "--out", str(root / "out"), "--regions", "3", "--region-size", "32",
                                      "--diverse", "--label-path", "labels/{id}.tif"])
    assert result.exit_code == 0, result.output
    return project, root, result.output


def test_suggest_writes_review_annotations_rows_and_montage(suggested):
    project, root, output = suggested
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["montage.png", "new.geojson", "rows.csv"]  # img0 is labelled
    objects = read_qupath_objects(out / "new.geojson")
    assert len(objects) == 3
    for rank, obj in enumerate(objects, 1):
        assert obj["type"] == "annotation" and obj["class_name"] == "Review"
        assert obj["measurements"]["Rank"] == rank and 0 <= obj["measurements"]["Score"] <= 1
    scores = [o["measurements"]["Score"] for o in objects]
    assert scores == sorted(scores, reverse=True)
    montage = cv2.imread(str(out / "montage.png"))
    assert montage is not None and montage.shape[1] > 3 * 128
    with open(out / "rows.csv") as handle:
        rows = list(csv.DictReader(handle))
    windows = [Window(*map(int, r["region"].split(","))) for r in rows]
    assert all(r["label"] == "labels/new.tif" for r in rows)
    assert not any(overlaps(a, b) for i, a in enumerate(windows) for b in windows[i + 1:])
    ring = objects[0]["geometry"]["coordinates"][0]
    w = windows[0]
    assert {tuple(p) for p in ring} == {(w.col, w.row), (w.right, w.row), (w.right, w.bottom), (w.col, w.bottom)}


def test_suggested_rows_train_on_exactly_the_new_regions(suggested, tmp_path):
    project, root, _ = suggested
    out = root / "out"
    (out / "labels").mkdir(exist_ok=True)
    shutil.copy(project / "img0_mask.tif", out / "labels" / "new.tif")  # the annotator's export
    rows = read_manifest(out / "rows.csv")
    assert [r.label for r in rows] == [str(out / "labels" / "new.tif")] * 3
    manifest = out / "rows.csv"
    text = manifest.read_text().splitlines()
    text = [text[0]] + [line + "0" for line in text[1:]]  # fold 0 trains
    text.append(f"val,{project / 'img1.tif'},{project / 'img1_mask.tif'},,,,1")
    (out / "train.csv").write_text("\n".join(text) + "\n")  # next to rows.csv: its paths are relative
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "from-picks",
                                      "--runs-dir", str(tmp_path / "runs"), "--epochs", "1",
                                      "--set", f"data.manifest={out / 'train.csv'}",
                                      "--set", "train.windows_per_epoch=4", "--set", "data.stats_windows=2"])
    assert result.exit_code == 0, result.output
    assert "val dice" in result.output


def test_pseudo_writes_labels_with_ignored_pixels_and_weighted_rows(trained, tmp_path):
    project = trained.parent.parent
    result = CliRunner().invoke(cli, ["pseudo", "-r", str(trained), str(project / "img1.tif"), "--out",
                                      str(tmp_path / "ps"), "--low", "0.3", "--high", "0.7", "--weight", "0.25",
                                      "--tta", "none", "--epochs", "last:1"])
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "ps" / "img1.pseudo.tif")
    assert labels.shape == (90, 133) and set(np.unique(labels)) <= {0, 1, IGNORE_INDEX}
    record = json.loads((tmp_path / "ps" / "img1.pseudo.json").read_text())
    assert record["low"] == 0.3 and record["high"] == 0.7 and record["ignore_index"] == IGNORE_INDEX
    assert abs(sum(record["shares"].values()) - 1) < 1e-4
    import rasterio

    with rasterio.open(tmp_path / "ps" / "img1.pseudo.tif") as dataset:
        assert dataset.tags()["segkit_pseudo_high"] == "0.7" and dataset.nodata == IGNORE_INDEX
    (row,) = read_manifest(tmp_path / "ps" / "rows.csv")
    assert row.weight == 0.25 and row.label == str(tmp_path / "ps" / "img1.pseudo.tif")


def test_review_file_of_a_geotiff_is_in_its_crs_and_still_a_qupath_annotation(tmp_path):
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from segkit.io.writers.review import write_review

    transform = from_origin(500000, 4000000, 0.5, 0.5)  # 0.5 m pixels, north up
    path = write_review(tmp_path / "scene.geojson", [Window(10, 20, 40, 40)], [{"Score": 0.7}], names=["suggest 1"],
                        crs=CRS.from_epsg(32633), transform=transform)
    doc = json.loads(path.read_text())
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    xs, ys = {x for x, _ in ring}, {y for _, y in ring}
    assert xs == {500010.0, 500030.0} and ys == {3999995.0, 3999975.0}
    (obj,) = read_qupath_objects(path)
    assert obj["type"] == "annotation" and obj["class_name"] == "Review" and obj["measurements"] == {"Score": 0.7}
