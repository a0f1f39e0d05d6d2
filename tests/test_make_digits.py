"""tools/make_digits.py: class folders, manifests, the corrupted test copy and the recorded label flips."""

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("sklearn")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_digits.py"


def _tool():
    spec = importlib.util.spec_from_file_location("make_digits", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_class_folders_manifests_and_both_variants(tmp_path):
    tool = _tool()
    counts = tool.make_digits(tmp_path, per_class=10, noise_rate=0.1, seed=3)
    train, test = _rows(tmp_path / "train.csv"), _rows(tmp_path / "test.csv")
    assert (len(train), len(test)) == (counts["train"], counts["test"]) == (80, 20)
    assert {r["class"] for r in test} == set(tool.CLASSES)  # stratified: 2 of every class held out
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    for row in train + test:  # one sub-folder per class, named by the class
        path = tmp_path / row["image"]
        assert path.parent.name == row["class"] and path.is_file()
    image = cv2.imread(str(tmp_path / train[0]["image"]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (32, 32, 3) and image.max() > 100

    corrupted = _rows(tmp_path / "test_corrupted.csv")
    assert [r["id"] for r in corrupted] == [r["id"] for r in test]
    differences = [np.abs(cv2.imread(str(tmp_path / c["image"])).astype(int)
                          - cv2.imread(str(tmp_path / t["image"])).astype(int)).mean()
                   for c, t in zip(corrupted, test)]
    assert min(differences) > 1.0  # every test image is changed

    noisy, flipped = _rows(tmp_path / "train_noisy.csv"), _rows(tmp_path / "flipped.csv")
    assert len(flipped) == 8  # 10% of 80
    given = {r["id"]: r["class"] for r in noisy}
    truth = {r["id"]: r["class"] for r in train}
    assert {i for i in given if given[i] != truth[i]} == {r["id"] for r in flipped}
    for row in flipped:
        assert row["true_class"] == truth[row["id"]] != row["given_class"] == given[row["id"]]


def test_same_seed_same_files(tmp_path):
    tool = _tool()
    tool.make_digits(tmp_path / "a", per_class=3, seed=5)
    tool.make_digits(tmp_path / "b", per_class=3, seed=5)
    for name in ("train.csv", "test_corrupted.csv", "flipped.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    first = _rows(tmp_path / "a" / "test_corrupted.csv")[0]["image"]
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
