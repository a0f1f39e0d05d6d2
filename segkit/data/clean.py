"""Label-issue finding from out-of-fold probabilities (`segkit clean`): our own confident-learning filter.

Method: Northcutt, Jiang and Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset
Labels", Journal of Artificial Intelligence Research 70. Per class j the threshold t_j is the
mean self-confidence, the mean predicted probability of j over the rows labelled j. A row
labelled i is a label issue when its own-label probability is below t_i while some other class
j reaches its threshold t_j (the row is confidently counted in an off-diagonal cell of the
confident joint). Issues are ranked by the normalized margin p_i - max_{j != i} p_j, lowest
(most clearly mislabelled) first, and the suggested class is the most probable class that
reaches its threshold.

Written here because the reference implementation (cleanlab) is AGPL-licensed, which our MIT
users cannot take on by default. The probabilities must be out-of-fold (each row predicted by a
model that did not train on it), as `segkit oof` writes them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from segkit.data.manifest import ManifestRow, write_manifest
from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path, check_output


@dataclass
class LabelIssues:
    thresholds: np.ndarray  # (classes,) per-class threshold t_j (inf for a class with no rows)
    flagged: np.ndarray  # (rows,) bool
    ranked: np.ndarray  # indices of the flagged rows, most likely mislabelled first
    margin: np.ndarray  # (rows,) p_given - max other p
    suggested: np.ndarray  # (rows,) the most probable class above its threshold (-1: none)


def find_label_issues(labels: Sequence[int], probs: np.ndarray) -> LabelIssues:
    """Confident-learning label issues (see the module doc) of ``labels`` (rows,) under ``probs`` (rows, classes)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise SegkitError(f"find_label_issues: {probs.shape} probabilities for {len(labels)} labels")
    rows, classes = probs.shape
    if rows and (labels.min() < 0 or labels.max() >= classes):
        raise SegkitError(f"find_label_issues: labels outside 0..{classes - 1}")
    thresholds = np.full(classes, np.inf)
    for j in range(classes):
        own = labels == j
        if own.any():
            thresholds[j] = probs[own, j].mean()
    index = np.arange(rows)
    self_confidence = probs[index, labels]
    above = probs >= thresholds[None, :]
    others = above.copy()
    others[index, labels] = False
    flagged = (self_confidence < thresholds[labels]) & others.any(axis=1)
    other_probs = probs.copy()
    other_probs[index, labels] = -np.inf
    margin = self_confidence - other_probs.max(axis=1) if classes > 1 else np.zeros(rows)
    suggested = np.where(others.any(axis=1), np.where(others, probs, -np.inf).argmax(axis=1), -1)
    candidates = np.flatnonzero(flagged)
    ranked = candidates[np.argsort(margin[candidates], kind="stable")]
    return LabelIssues(thresholds, flagged, ranked, margin, suggested)


def write_label_issues(path: Path, rows: Sequence[ManifestRow], labels: np.ndarray, probs: np.ndarray,
                       issues: LabelIssues, class_names: Sequence[str], overwrite: bool = False) -> Path:
    """label_issues.csv: rank, id, image, given and suggested class, their probabilities, threshold, margin."""
    with atomic_path(path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "id", "image", "given", "suggested", "p_given", "p_suggested",
                         "threshold_given", "margin"])
        for rank, i in enumerate(issues.ranked, start=1):
            given, suggested = int(labels[i]), int(issues.suggested[i])
            writer.writerow([rank, rows[i].id, str(rows[i].image), class_names[given], class_names[suggested],
                             f"{probs[i, given]:.6g}", f"{probs[i, suggested]:.6g}",
                             f"{issues.thresholds[given]:.6g}", f"{issues.margin[i]:.6g}"])
    return Path(path)


def clean_rows(rows: Sequence[ManifestRow], probs_by_id: dict[str, np.ndarray], class_names: Sequence[str],
               *, issues_path: Path, manifest_path: Path, source: Path, overwrite: bool = False) -> LabelIssues:
    """Flag the rows' label issues, write label_issues.csv and a manifest without the flagged rows.

    ``rows`` hold integer classes (resolved); ``probs_by_id`` the out-of-fold probabilities of
    every row id. Both outputs are checked before either is written; ``source`` (the input
    manifest) is never one of them, so the input is never modified.
    """
    missing = [row.id for row in rows if row.id not in probs_by_id]
    if missing:
        raise SegkitError(f"manifest row(s) {', '.join(map(repr, missing[:5]))} have no out-of-fold prediction "
                          f"({len(missing)} of {len(rows)} rows)")
    for path in (issues_path, manifest_path):
        if Path(path).resolve() == Path(source).resolve():
            raise SegkitError(f"{path}: is the input manifest; clean never overwrites its input")
        check_output(path, overwrite)
    labels = np.array([int(row.target) for row in rows])
    probs = np.stack([probs_by_id[row.id] for row in rows])
    issues = find_label_issues(labels, probs)
    write_label_issues(issues_path, rows, labels, probs, issues, class_names, overwrite=overwrite)
    kept = [row for row, bad in zip(rows, issues.flagged) if not bad]
    write_manifest(kept, manifest_path, class_names=list(class_names))
    return issues
