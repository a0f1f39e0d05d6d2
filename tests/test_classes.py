"""Class labels: names and ids, class folders, the epoch order (plain and class-balanced), tile classes."""

import warnings

import cv2
import numpy as np
import pytest

from segkit.data.classes import (
    class_folder_rows, epoch_order, is_class_folder, resolve_classes, tile_class, warn_missing_classes,
)
from segkit.data.manifest import ManifestRow, read_manifest
from segkit.ground.errors import SegkitError


def _rows(*targets, label=None):
    return [ManifestRow(id=f"r{i}", image=f"r{i}.png", target=t, label=label) for i, t in enumerate(targets)]


def test_names_map_to_their_index_in_class_names_and_ids_stay_ids():
    rows, names = resolve_classes(_rows("cat", "dog", 0, "bird"), ["dog", "cat", "bird"], "m.csv")
    assert [r.target for r in rows] == [1, 0, 0, 2] and names == ["dog", "cat", "bird"]
    rows, names = resolve_classes(_rows("b", "a", "b"), None, "m.csv")  # no list: sorted names
    assert names == ["a", "b"] and [r.target for r in rows] == [1, 0, 1]
    rows, names = resolve_classes(_rows(2, 0), None, "m.csv")  # ids only: "0".."max"
    assert names == ["0", "1", "2"] and [r.target for r in rows] == [2, 0]
    rows, _ = resolve_classes(_rows(3, "3"), [str(i) for i in range(10)], "m.csv")  # digit names = their ids
    assert [r.target for r in rows] == [3, 3]


@pytest.mark.parametrize("rows, names, message", [
    (_rows("cat", "cow"), ["cat", "dog"], r"m\.csv: manifest row 'r1': class 'cow' is not in data.class_names \(cat, dog\)"),
    (_rows(0, 5), ["a", "b"], "class 5 is not in data.class_names"),
    (_rows("a", 1), None, "mixes names and ids"),
    (_rows("a", None), None, "manifest row 'r1' has no class"),
    (_rows(None, label="/x/mask.tif"), None, r"has a label \(mask.tif\) but no class; --task cls"),
    (_rows("a", "a"), None, "at least 2 classes"),
    (_rows("a", "b"), ["a", "a"], "data.class_names: names repeat"),
])
def test_bad_classes_are_one_line_errors(rows, names, message):
    with pytest.raises(SegkitError, match=message):
        resolve_classes(rows, names, "m.csv")


def test_manifest_class_cells_keep_names_and_parse_ids(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 7), 9, np.uint8))
    (tmp_path / "m.csv").write_text("id,image,class\nx,a.png,cat\ny,a.png,4\n")
    assert [r.target for r in read_manifest(tmp_path / "m.csv")] == ["cat", 4]


def test_class_folder_rows(tmp_path):
    for name, stems in (("cat", ["a", "b"]), ("dog", ["c"])):
        (tmp_path / name).mkdir()
        for stem in stems:
            cv2.imwrite(str(tmp_path / name / f"{stem}.png"), np.zeros((4, 6), np.uint8))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    assert is_class_folder(tmp_path) and not is_class_folder(tmp_path / "cat")
    rows = class_folder_rows(tmp_path)
    assert [(r.id, r.target, r.image.name) for r in rows] == [("a", "cat", "a.png"), ("b", "cat", "b.png"),
                                                              ("c", "dog", "c.png")]
    cv2.imwrite(str(tmp_path / "dog" / "a.png"), np.zeros((4, 6), np.uint8))  # same stem in two classes
    assert [r.id for r in class_folder_rows(tmp_path)] == ["cat/a", "cat/b", "dog/a", "dog/c"]
    (tmp_path / "images").mkdir()
    assert not is_class_folder(tmp_path)  # the images/ + masks/ convention wins


def test_epoch_order_visits_every_row_once_and_is_a_pure_function():
    targets = [0] * 7 + [1] * 3
    order = epoch_order(targets, seed=1, epoch=2)
    assert sorted(order.tolist()) == list(range(10))
    assert np.array_equal(order, epoch_order(targets, seed=1, epoch=2))
    assert not np.array_equal(order, epoch_order(targets, seed=1, epoch=3))
    shards = [epoch_order(targets, seed=1, epoch=2, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3] and len(set(np.concatenate(shards).tolist())) == 9
    assert len(epoch_order(targets, seed=1, epoch=2, fraction=0.5)) == 5
    assert len(epoch_order([0, 1], seed=0, epoch=1, min_length=8)) == 8  # one whole batch of repeats


def test_balanced_order_draws_every_class_equally_often():
    targets = np.array([0] * 80 + [1] * 15 + [2] * 5)
    plain = np.concatenate([targets[epoch_order(targets, seed=0, epoch=e)] for e in range(50)])
    balanced = np.concatenate([targets[epoch_order(targets, seed=0, epoch=e, balanced=True)] for e in range(50)])
    assert np.allclose(np.bincount(plain) / len(plain), [0.80, 0.15, 0.05])
    assert np.allclose(np.bincount(balanced) / len(balanced), [1 / 3] * 3, atol=0.03)


def test_tile_class_counts_foreground_in_source_pixels():
    mask = np.zeros((8, 8), np.uint8)
    mask[:2, :2] = 1  # 4 network pixels = 16 source pixels at downscale 2
    assert tile_class(mask, 16, 4.0) == 1 and tile_class(mask, 17, 4.0) == 0
    assert tile_class(np.zeros((8, 8)), 1) == 0


def test_classes_without_training_rows_are_named_in_a_warning():
    rows, names = resolve_classes(_rows("a", "a"), ["a", "b", "c"], "m.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_missing_classes(rows, names, "m.csv") == ["b", "c"]
    assert "'b', 'c' have no training rows" in str(caught[0].message)
