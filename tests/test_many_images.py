"""Many small images: rows in columns, small images as whole windows, batched validation, resumable inference."""

import csv
import gc

import cv2
import numpy as np
import pytest
import torch

from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.dataset import LabelOptions
from segkit.data.headers import open_table
from segkit.data.inputs import open_training_data
from segkit.data.manifest import read_manifest
from segkit.data.preprocess import Preprocess
from segkit.data.split import FoldSpec
from segkit.data.table import PairList, StringColumn
from segkit.ground.geometry import Window
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.predict import predict_probs
from segkit.metrics.seg import DiceAccumulator
from segkit.models.factory import create_model
from segkit.post.morphology import threshold as threshold_probs
from segkit.train.validate import ValidationSettings, validate

SIZES = [(40, 48), (48, 48), (33, 45), (48, 29), (21, 36), (47, 40)]  # all within a 48 px window


def write_small_images(root, repeat: int = 2):
    """PNG images (discs on noise) of the SIZES above with 0/1 masks; the manifest lists each ``repeat`` times."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rows = []
    for index, (height, width) in enumerate(SIZES):
        yy, xx = np.mgrid[:height, :width]
        mask = (((yy - height / 2) ** 2 + (xx - width / 3) ** 2) <= (min(height, width) / 4) ** 2).astype(np.uint8)
        image = np.clip(rng.normal(60, 12, (height, width)) + 120 * mask, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"s{index}.png"), image)
        cv2.imwrite(str(root / f"s{index}_mask.png"), mask)
        rows += [{"id": f"s{index}_{k}", "image": f"s{index}.png", "label": f"s{index}_mask.png", "fold": k % 2}
                 for k in range(repeat)]
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def _settings(**changes):
    base = dict(fov_px=48, size=32, overlap_px=None, tta="none", blend="gaussian", threshold=0.5, batch_size=4,
                amp=False, activation="sigmoid")
    return ValidationSettings(**{**base, **changes})


def _model():
    torch.manual_seed(0)
    return create_model("Unet", "resnet18", None, in_channels=1).eval()


def test_rows_live_in_arrays_not_objects(tmp_path, own_cache):
    """The table is numpy arrays only, and the Python objects alive after opening do not grow with the rows."""
    def alive(repeat):
        manifest = write_small_images(tmp_path / f"r{repeat}", repeat=repeat)
        data = open_training_data(str(manifest), FoldSpec(folds=2, val_fold=1), LabelOptions(), task="seg",
                                  tissue="otsu", fov_px=48, foreground_share=0.5)
        gc.collect()
        return data, len(gc.get_objects())

    small, before = alive(2)
    large, after = alive(200)  # 1,200 rows instead of 12
    assert isinstance(large.train_pairs, PairList) and len(large.train_pairs) == 600
    table = large.train_pairs.table
    for name, value in vars(table).items():
        held = vars(value).values() if isinstance(value, StringColumn) else [value]
        assert all(isinstance(v, np.ndarray) and v.dtype != object for v in held), name
    assert not large.sampler._grids  # no thumbnail grid for images that fit in one window
    assert after - before < 200, (before, after)  # not one object per row
    pair = large.train_pairs[5]
    assert pair.row == read_manifest(tmp_path / "r200" / "manifest.csv")[10]
    assert (table.height == np.repeat([h for h, _ in SIZES], 100)).all()  # sizes from the (cached) headers
    assert (table.width == np.repeat([w for _, w in SIZES], 100)).all()


def test_string_column_round_trips():
    values = ["a", "", "é/ü path.png", "x" * 300]
    column = StringColumn(values)
    assert [column[i] for i in range(len(column))] == values


def test_batched_validation_of_small_images_equals_one_by_one(tmp_path, own_cache):
    manifest = write_small_images(tmp_path, repeat=1)
    pairs = open_table(read_manifest(manifest), LabelOptions())
    raster = pairs[0].raster
    preprocess = Preprocess(resolve_channels(parse_channels(None, bands=1, dtype=raster.dtype), raster.thumbnail(64)[0]))
    model = _model()
    settings = _settings()
    batched = validate([(model, 1.0)], pairs, preprocess, settings, torch.device("cpu"))
    # the reference: each image alone through the tiled predictor, as validation did before
    expected = DiceAccumulator(classes=1)
    predictor = EnsemblePredictor([(model, 1.0)], "none", activation="sigmoid")
    for pair in pairs:
        region = Window(0, 0, pair.raster.height, pair.raster.width)
        probs = predict_probs(predictor, pair.raster, fov_px=48, size=32, overlap_px=None, preprocess=preprocess,
                              blend="gaussian", batch_size=1, device="cpu", region=region)
        expected.add(threshold_probs(probs, 0.5), pair.labels.read(region), image_id=pair.row.id)
    assert batched["per_image"] == pytest.approx(expected.per_image(), abs=1e-9)
    assert batched["dice"] == pytest.approx(float(expected.mean()), abs=1e-9)
    assert 0 < batched["dice"] < 1  # a real, non-trivial score
    one_by_one = validate([(model, 1.0)], pairs, preprocess, _settings(batch_size=1, small_images="resize"),
                          torch.device("cpu"))
    resized = validate([(model, 1.0)], pairs, preprocess, _settings(batch_size=5, small_images="resize"),
                       torch.device("cpu"))
    assert resized["per_image"] == pytest.approx(one_by_one["per_image"], abs=1e-9)


@pytest.fixture(scope="module")
def small_run(module_tmp):
    """A one-epoch run trained on images smaller than its 48 px window (read at 32 px)."""
    import yaml
    from click.testing import CliRunner

    from segkit.cli import cli

    root = module_tmp("small")
    manifest = write_small_images(root / "data")
    config = {"run": {"runs_dir": str(root / "runs"), "progress": False},
              "data": {"manifest": str(manifest), "fov_px": 48, "size": 32, "val_fold": 1, "stats_windows": 8},
              "model": {"encoder": "resnet18"},
              "train": {"epochs": 1, "windows_per_epoch": 8, "batch_size": 4},
              "infer": {"epochs": "last:1", "batch_size": 4, "tta": "none"}}
    (root / "small.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "small.yaml"), "--name", "s"])
    assert result.exit_code == 0, result.output
    return root


def _infer(*args):
    from click.testing import CliRunner

    from segkit.cli import cli

    return CliRunner().invoke(cli, ["infer", *[str(a) for a in args]])


def _read_rle(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_images_smaller_than_the_window_train_and_predict(small_run):
    import json

    from segkit.io.rle import decode

    metrics = [json.loads(line) for line in (small_run / "runs" / "s" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_dice" in m for m in metrics)  # validation ran over the small validation images
    out = small_run / "out"
    result = _infer(small_run / "data", "--run", small_run / "runs" / "s", "--rle", out / "sub.csv",
                    "--polygons", str(out / "{id}.geojson"))  # a folder stands for its images
    assert result.exit_code == 0, result.output
    rows = _read_rle(out / "sub.csv")
    images = sorted(p.stem for p in (small_run / "data").glob("*.png"))
    assert [r[0] for r in rows[1:]] == images  # masks are images too: 12 files, each once, in order
    for image_id, rle in rows[1:]:
        height, width = cv2.imread(str(small_run / "data" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED).shape[:2]
        assert decode(rle, (height, width)).shape == (height, width)
    assert sorted(p.stem for p in out.glob("*.geojson")) == images


def test_interrupted_folder_inference_resumes_without_redoing_written_images(small_run, monkeypatch):
    import segkit.infer.run as run

    folder = small_run / "data"
    common = ["--run", small_run / "runs" / "s", "--set", "infer.batch_size=2"]
    whole = small_run / "whole"
    assert _infer(folder, *common, "--rle", whole / "sub.csv", "--polygons", str(whole / "{id}.geojson")).exit_code == 0
    out = small_run / "resumed"
    original, calls = run.post_process, []

    def interrupted_after_five(*args, **kwargs):  # Ctrl-C while the sixth image is post-processed
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "post_process", interrupted_after_five)
    args = [folder, *common, "--rle", out / "sub.csv", "--polygons", str(out / "{id}.geojson"), "--resume"]
    assert _infer(*args).exit_code != 0
    assert not (out / "sub.csv").exists() and len(list(out.glob("*.geojson"))) == 5
    assert len((out / ".sub.csv.partial").read_text().splitlines()) == 5
    calls.clear()
    monkeypatch.setattr(run, "post_process", lambda *a, **k: calls.append(1) or original(*a, **k))
    result = _infer(*args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 12 - 5  # the written images are not predicted again
    assert _read_rle(out / "sub.csv") == _read_rle(whole / "sub.csv")
    assert not (out / ".sub.csv.partial").exists()
    for path in whole.glob("*.geojson"):
        assert (out / path.name).read_text() == path.read_text()


def test_a_second_start_opens_no_file_and_an_edited_one_is_read_again(tmp_path, own_cache, monkeypatch):
    import os

    import segkit.data.headers as headers

    manifest = write_small_images(tmp_path, repeat=3)  # 18 rows, 6 distinct image + mask pairs
    opened = []
    original = headers._read_unit
    monkeypatch.setattr(headers, "_read_unit", lambda *a: opened.append(a[1]) or original(*a))
    rows = read_manifest(manifest)
    first = open_table(rows, LabelOptions())
    assert len(opened) == 6  # one check per distinct pair of files
    opened.clear()
    second = open_table(rows, LabelOptions())
    assert opened == []  # all from the cache
    assert (second.table.height == first.table.height).all() and (second.table.width == first.table.width).all()
    stat = os.stat(tmp_path / "s2.png")
    os.utime(tmp_path / "s2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    open_table(rows, LabelOptions())
    assert [rows[i].image.name for i in opened] == ["s2.png"]


def test_a_bad_row_among_many_is_named(tmp_path, own_cache):
    from segkit.ground.errors import SegkitError

    manifest = write_small_images(tmp_path, repeat=2)
    cv2.imwrite(str(tmp_path / "s3.png"), np.full((48, 29, 3), 90, np.uint8))  # 3 bands among 1-band images
    with pytest.raises(SegkitError, match=r"s3\.png: 3 band\(s\), but 10 of 12 images have 1"):
        open_table(read_manifest(manifest), LabelOptions())


def test_the_journal_keeps_the_last_line_of_an_image_and_drops_a_torn_one(tmp_path):
    from segkit.infer.folder import RleJournal

    path = tmp_path / ".sub.csv.partial"
    journal = RleJournal(path, resume=True)
    journal.add("a", ["1 2"])
    journal.add("b", ["3 4", "7 1"])
    journal.add("a", ["5 6"])  # predicted again
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'["c", ["9')  # cut short by a kill
    again = RleJournal(path, resume=True)
    assert again.done == {"a", "b"}
    again.add("c", [""])
    again.close()
    assert list(again.rows()) == [("b", "3 4"), ("b", "7 1"), ("a", "5 6"), ("c", "")]


def test_small_images_are_drawn_by_image_as_whole_windows():
    from segkit.data.windows import AreaColumns, RandomWindowSampler

    columns = AreaColumns(np.array([20, 48, 300]), np.array([30, 10, 200]),
                          np.array([[-1] * 4, [-1] * 4, [-1] * 4]), {})
    pad = RandomWindowSampler(columns, fov_px=48)
    np.testing.assert_allclose(pad.probabilities, np.array([48 * 48, 48 * 48, 300 * 200]) / (2 * 48 * 48 + 60000))
    resize = RandomWindowSampler(columns, fov_px=48, small_images="resize")
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    seen = set()
    for _ in range(200):
        (index, window), (same, whole) = pad.sample(rng_a), resize.sample(rng_b)
        assert index == same  # the same draws: only the window differs
        seen.add(index)
        if index < 2:
            assert tuple(window) == (0, 0, 48, 48)  # padded to the field of view
            assert tuple(whole) == (0, 0, int(columns.height[index]), int(columns.width[index]))  # the image itself
        else:
            assert window == whole and window.height == 48
    assert seen == {0, 1, 2}
