"""Confident-learning label issues: thresholds by hand, planted flips found, outputs written, input untouched."""

import csv
import hashlib

import cv2
import numpy as np
import pytest

from segkit.data.clean import clean_rows, find_label_issues
from segkit.data.manifest import ManifestRow, read_manifest
from segkit.ground.errors import SegkitError
from segkit.io.class_table import read_class_table, write_class_table


def test_thresholds_and_flags_by_hand():
    labels = [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])
    issues = find_label_issues(labels, probs)
    # t0 = mean(0.9, 0.5) = 0.7; t1 = mean(0.8, 0.2) = 0.5
    assert np.allclose(issues.thresholds, [0.7, 0.5])
    # row 1: p0 0.5 < 0.7 and p1 0.5 >= 0.5 -> flagged; row 3: p1 0.2 < 0.5 and p0 0.8 >= 0.7 -> flagged
    assert issues.flagged.tolist() == [False, True, False, True]
    assert issues.ranked.tolist() == [3, 1]  # margin -0.6 before 0.0
    assert issues.suggested[[1, 3]].tolist() == [1, 0]


def _planted(rows=300, classes=5, rate=0.1, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, rows)
    logits = rng.normal(0, 1.0, (rows, classes))
    logits[np.arange(rows), truth] += 3.5  # a decent model of the true labels
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.choice(rows, int(rate * rows), replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return given, probs, set(flipped.tolist())


def test_finds_planted_label_flips():
    given, probs, flipped = _planted()
    issues = find_label_issues(given, probs)
    found = set(np.flatnonzero(issues.flagged).tolist())
    precision, recall = len(found & flipped) / len(found), len(found & flipped) / len(flipped)
    assert precision >= 0.8 and recall >= 0.7, (precision, recall)  # the goals of the digits benchmark
    top = issues.ranked[:len(flipped) // 2].tolist()  # the best-ranked half is almost all real flips
    assert len(set(top) & flipped) >= 0.9 * len(top)


def _digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_clean_rows_writes_issues_and_a_manifest_without_them_and_never_touches_the_input(tmp_path):
    given, probs, flipped = _planted(rows=60, classes=3, rate=0.1, seed=4)
    names = ["a", "b", "c"]
    cv2.imwrite(str(tmp_path / "x.png"), np.full((6, 5), 7, np.uint8))
    source = tmp_path / "manifest.csv"
    source.write_text("id,image,class\n" + "".join(f"r{i},x.png,{names[g]}\n" for i, g in enumerate(given)))
    rows = [ManifestRow(id=r.id, image=r.image, target=names.index(r.target)) for r in read_manifest(source)]
    before = _digest(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    issues = clean_rows(rows, {f"r{i}": p for i, p in enumerate(probs)}, names, issues_path=out / "label_issues.csv",
                        manifest_path=out / "clean.csv", source=source)
    assert _digest(tmp_path) == before
    with open(out / "label_issues.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["id"] for row in table] == [f"r{i}" for i in issues.ranked]
    assert {int(row["id"][1:]) for row in table} >= flipped - {i for i in flipped if not issues.flagged[i]}
    assert all(row["given"] != row["suggested"] for row in table)
    kept = read_manifest(out / "clean.csv")
    assert len(kept) == 60 - issues.flagged.sum()
    assert not {r.id for r in kept} & {row["id"] for row in table}
    assert {r.target for r in kept} <= set(names)  # classes written by name
    with pytest.raises(SegkitError, match="exists"):
        clean_rows(rows, {f"r{i}": p for i, p in enumerate(probs)}, names, issues_path=out / "label_issues.csv",
                   manifest_path=out / "other.csv", source=source)
    with pytest.raises(SegkitError, match="is the input manifest"):
        clean_rows(rows, {f"r{i}": p for i, p in enumerate(probs)}, names, issues_path=out / "x.csv",
                   manifest_path=source, source=source, overwrite=True)
    with pytest.raises(SegkitError, match=r"'r0' have no out-of-fold prediction \(1 of 60"):
        clean_rows(rows, {f"r{i}": p for i, p in enumerate(probs) if i}, names, issues_path=out / "y.csv",
                   manifest_path=out / "z.csv", source=source)
    assert _digest(tmp_path) == before and not (out / "y.csv").exists() and not (out / "z.csv").exists()


def test_class_table_round_trip_and_errors(tmp_path):
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    path = write_class_table(tmp_path / "p.csv", ["a", "b"], probs, ["cat", "dog"], extra={"fold": [0, 1]})
    assert path.read_text().splitlines()[:2] == ["id,fold,label,cat,dog", "a,0,dog,0.2,0.8"]
    table = read_class_table(path, extra=("fold",))
    assert table.labels == ["dog", "cat"] and table.extra == {"fold": ["0", "1"]} and np.allclose(table.probs, probs)
    plain = write_class_table(tmp_path / "q.csv", ["a", "b"], probs, ["cat", "dog"], with_probs=False)
    assert plain.read_text().splitlines() == ["id,label", "a,dog", "b,cat"]
    with pytest.raises(SegkitError, match="exists"):
        write_class_table(path, ["a"], probs[:1], ["cat", "dog"])
    with pytest.raises(SegkitError, match="clash"):
        write_class_table(tmp_path / "r.csv", ["a"], probs[:1], ["label", "dog"])
    with pytest.raises(SegkitError, match="expected the columns id,fold,label"):
        read_class_table(plain, extra=("fold",))
    assert not (tmp_path / "r.csv").exists()
