"""Scoring prediction files against truth files, report.html, and --vs comparisons."""

import csv
import re

import cv2
import numpy as np
import pytest
import tifffile

from segkit.ground.errors import SegkitError
from segkit.io.rle import encode
from segkit.evaluate.scoring import compare
from segkit.evaluate.files import LabelReading, evaluate_files, open_specs, pred_opener, truth_opener
from segkit.report.html import render_seg_report
from segkit.report.overlay import Pictures
from segkit.evaluate.sources import images_from_paths

SIZES = {"a": (61, 77), "b": (45, 50), "c": (30, 41), "d": (33, 35)}  # d has no truth


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        mask[r:r + 8, c:c + 8] = 1
    return mask


def write_rle(path, masks: dict, extra=()):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "rle"])
        for image_id, mask in masks.items():
            writer.writerow([image_id, encode(mask)])
        for image_id in extra:
            writer.writerow([image_id, "1 3"])


@pytest.fixture
def files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "truth").mkdir()
    truths, preds = {}, {}
    for index, (image_id, shape) in enumerate(SIZES.items()):
        truth = _blobs(shape, index)
        image = (40 + 150 * truth + np.random.default_rng(index).integers(0, 30, shape)).astype(np.uint8)
        if image_id == "c":
            tifffile.imwrite(tmp_path / "images" / "c.tif", image.astype(np.uint16) * 200)  # 16-bit TIFF
        else:
            cv2.imwrite(str(tmp_path / "images" / f"{image_id}.png"), image)
        if image_id != "d":
            cv2.imwrite(str(tmp_path / "truth" / f"{image_id}.png"), truth * 255)
            truths[image_id] = truth
        pred = truth.copy()
        pred[:3] = 1 - pred[:3]  # every prediction wrong in its first rows
        preds[image_id] = pred
    del preds["b"]  # b has truth but no prediction: scored as empty
    write_rle(tmp_path / "sub.csv", preds, extra=["zz"])
    return tmp_path, truths, preds


def _evaluate(root, pred, **kwargs):
    reading = LabelReading()
    pred_spec, truth_spec = open_specs(str(pred), str(root / "truth"), reading)
    images = images_from_paths([str(root / "images")])
    evaluation = evaluate_files(images, pred_spec, truth_spec, reading, **kwargs)
    return evaluation, images, truth_opener(truth_spec, reading), pred_opener(pred_spec)


def test_files_scores_and_notes(files):
    root, truths, preds = files
    evaluation, _, _, _ = _evaluate(root, root / "sub.csv")
    per_image = evaluation.per_image()
    assert set(per_image) == {"a", "b", "c"}
    assert per_image["b"]["dice"] == 0.0  # missing prediction scored as empty
    t, p = truths["a"].astype(bool), preds["a"].astype(bool)
    assert per_image["a"]["dice"] == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
    notes = " | ".join(evaluation.notes)
    assert "1 image(s) have no labels and were skipped: d" in notes
    assert "1 image(s) have no prediction and were scored as empty: b" in notes
    assert "predictions for 1 image(s) without labels were skipped" in notes
    assert "1 prediction(s) name no known image and were skipped: zz" in notes


def test_tiles_pool_to_the_image_score(files):
    root, _, _ = files
    whole, _, _, _ = _evaluate(root, root / "sub.csv")
    tiled, _, _, _ = _evaluate(root, root / "sub.csv", tile_px=16)
    assert len(tiled.items) > len(whole.items) == 3
    for image_id, scores in whole.per_image().items():
        assert tiled.per_image()[image_id]["dice"] == pytest.approx(scores["dice"])


def test_report_is_one_file_with_expected_pictures(files, tmp_path):
    root, _, _ = files
    evaluation, images, truth_for, pred_for = _evaluate(root, root / "sub.csv")
    pictures = Pictures({i.id: i for i in images}, truth_for, {evaluation.label: pred_for})
    text = render_seg_report(evaluation, pictures, worst=2)
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 2  # histograms + 2 worst
    assert "src=\"http" not in text and "<link" not in text  # nothing outside the file
    worst = text.index("The 2 worst items")
    assert text.index("b rows 0-45", worst) > 0  # b (empty prediction) is among the worst


def test_vs_finds_a_planted_change(files):
    root, truths, preds = files
    changed = dict(preds)
    changed["a"] = np.zeros_like(preds["a"])  # the new prediction loses image a
    write_rle(root / "new.csv", changed)
    old, images, truth_for, old_for = _evaluate(root, root / "sub.csv")
    new, _, _, new_for = _evaluate(root, root / "new.csv")
    comparison = compare(new, old)
    assert [row["id"] for row in comparison.images if row["delta"] != 0] == ["a"]
    assert comparison.images[0]["delta"] < -0.5
    summary = comparison.summary()
    assert (summary["worse"], summary["better"], summary["common"]) == (1, 0, 3)
    assert comparison.items[0]["image_id"] == "a"
    pictures = Pictures({i.id: i for i in images}, truth_for, {new.label: new_for, old.label: old_for})
    text = render_seg_report(new, pictures, worst=1, comparison=comparison)
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 1 + 1  # histograms, worst, 1 change


def test_different_image_sets_compare_the_common_ones(files):
    root, truths, preds = files
    write_rle(root / "ab.csv", {k: preds[k] for k in ("a",)})
    old, _, _, _ = _evaluate(root, root / "sub.csv")
    reading = LabelReading()
    pred_spec, truth_spec = open_specs(str(root / "ab.csv"), str(root / "truth"), reading)
    images = [i for i in images_from_paths([str(root / "images")]) if i.id in ("a", "b")]
    new = evaluate_files(images, pred_spec, truth_spec, reading)
    comparison = compare(new, old)
    assert [r["id"] for r in comparison.images] == ["b", "a"] or {r["id"] for r in comparison.images} == {"a", "b"}
    assert comparison.only_old == ["c"] and comparison.only_new == []


def test_bad_inputs(files):
    root, _, _ = files
    with pytest.raises(SegkitError, match="missing.csv: --pred not found"):
        _evaluate(root, root / "missing.csv")
    reading = LabelReading()
    single = root / "truth" / "a.png"
    pred_spec, truth_spec = open_specs(str(root / "sub.csv"), str(single), reading)
    with pytest.raises(SegkitError, match="one --truth file for 4 images"):
        evaluate_files(images_from_paths([str(root / "images")]), pred_spec, truth_spec, reading)


def test_vs_through_the_cli(files):
    from click.testing import CliRunner

    from segkit.cli import cli

    root, truths, preds = files
    changed = dict(preds)
    changed["a"] = np.zeros_like(preds["a"])
    write_rle(root / "new.csv", changed)
    result = CliRunner().invoke(cli, ["evaluate", "--pred", str(root / "new.csv"), "--vs", str(root / "sub.csv"),
                                      "--truth", str(root / "truth"), "--images", str(root / "images"),
                                      "--out", str(root / "report.html"), "--worst", "2"])
    assert result.exit_code == 0, result.output
    assert "3 common image(s), 0 better, 1 worse" in result.output
    assert "note: 1 image(s) have no labels and were skipped: d" in result.output
    text = (root / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 2 + 1  # histograms, 2 worst, 1 change
    assert (root / "report.json").exists()


class _Ids:
    """A label source with object ids (as segkit.io.labels.instances and evaluate --run's watershed objects)."""

    def __init__(self, ids):
        self.ids = ids

    def read(self, window, out_size=None):
        return (self.ids[window.row:window.bottom, window.col:window.right] != 0).astype(np.uint8)

    def read_instances(self, window):
        return self.ids[window.row:window.bottom, window.col:window.right].astype(np.int32)


def test_instances_scored_by_their_ids_with_the_dsb_score(tmp_path):
    """Three touching true squares: predicted as three ids they are three matches (F1 1, DSB 1); the
    same pixels as one mask (components) are one merged object (IoU 1/3 with each), F1 0 and DSB 0;
    the pixel scores are equal."""
    from segkit.evaluate.scoring import evaluate_images
    from segkit.evaluate.sources import EvalImage

    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.full((20, 30, 3), 7, np.uint8))
    truth = np.zeros((20, 30), np.int32)
    truth[2:12, 2:12], truth[2:12, 12:22], truth[2:12, 22:27] = 5, 9, 4
    truth[12:17, 22:27] = 4
    images = [EvalImage("a", image)]
    by_ids = evaluate_images(images, lambda i, r: _Ids(truth), lambda i, r: _Ids(truth * 3), instances=True)
    merged = evaluate_images(images, lambda i, r: _Ids(truth), lambda i, r: type("M", (), {
        "read": lambda self, w, out_size=None: (truth[w.row:w.bottom, w.col:w.right] != 0).astype(np.uint8)})(),
        instances=True)
    a, b = by_ids.per_image()["a"], merged.per_image()["a"]
    assert (a["object_f1"], a["dsb"], b["object_f1"], b["dsb"]) == (1.0, 1.0, 0.0, 0.0)
    assert a["dice"] == b["dice"] == 1.0
    assert merged.summary()["object_fp"] == 1 and merged.summary()["object_fn"] == 3
    plain = evaluate_images(images, lambda i, r: _Ids(truth), lambda i, r: _Ids(truth * 3))
    assert "dsb" not in plain.per_image()["a"]
