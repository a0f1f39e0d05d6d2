"""Accuracy, macro F1, per-class precision/recall/F1, the confusion matrix and calibration error
for class predictions (images, tiles or pixels).

Macro F1 (the unweighted mean of the per-class F1, the usual classification-contest metric)
is what chooses the best checkpoint of a cls run.
"""

from __future__ import annotations

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.metrics.seg import as_numpy, f1_from_counts, safe_ratio


def confusion_matrix(pred, target, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts, rows = target, columns = prediction."""
    p, t = as_numpy(pred).reshape(-1).astype(np.int64), as_numpy(target).reshape(-1).astype(np.int64)
    if p.shape != t.shape:
        raise SegkitError(f"confusion_matrix: {p.shape} predictions vs {t.shape} targets")
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= classes):
        raise SegkitError(f"confusion_matrix: class ids outside 0..{classes - 1}")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def accuracy(pred, target) -> float:
    p, t = as_numpy(pred).reshape(-1), as_numpy(target).reshape(-1)
    return float((p == t).mean()) if t.size else 0.0


def _f1_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    f1 = f1_from_counts(tp, predicted - tp, support - tp)
    present = (support + predicted) > 0
    return f1, present


def macro_f1(pred, target, classes: int) -> float:
    """Unweighted mean F1 over the classes that occur in target or prediction (as sklearn does)."""
    f1, present = _f1_from_confusion(confusion_matrix(pred, target, classes))
    return float(f1[present].mean()) if present.any() else 0.0


class ConfusionAccumulator:
    """Accumulates a confusion matrix over batches: accuracy(), macro_f1(), per_class_f1()."""

    def __init__(self, classes: int):
        self.classes = max(2, int(classes))  # binary (one logit) scores as two classes
        self.matrix = np.zeros((self.classes, self.classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        self.matrix += confusion_matrix(pred, target, self.classes)

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else 0.0

    def per_class_f1(self) -> np.ndarray:
        return _f1_from_confusion(self.matrix)[0]

    def macro_f1(self) -> float:
        f1, present = _f1_from_confusion(self.matrix)
        return float(f1[present].mean()) if present.any() else 0.0

    def per_class(self) -> dict[str, np.ndarray]:
        """{"precision", "recall", "f1", "support"}: (classes,) arrays (a class never predicted has
        precision 0 unless it never occurs either: then every score is 1, as for empty masks)."""
        return per_class_scores(self.matrix)

    def report(self, class_names: list[str] | None = None) -> dict:
        """Plain-data summary: accuracy, macro_f1, per_class {name: {precision, recall, f1, support}}, confusion."""
        names = class_names or [str(i) for i in range(self.classes)]
        scores = self.per_class()
        return {
            "accuracy": self.accuracy(),
            "macro_f1": self.macro_f1(),
            "per_class": {name: {key: (int(values[i]) if key == "support" else float(values[i]))
                                 for key, values in scores.items()} for i, name in enumerate(names)},
            "confusion": self.matrix.tolist(),
        }


def per_class_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows = target)."""
    conf = np.asarray(conf, dtype=np.int64)
    tp = np.diag(conf).astype(np.float64)
    support, predicted = conf.sum(axis=1), conf.sum(axis=0)
    return {
        "precision": safe_ratio(tp, predicted) * ((predicted > 0) | (support == 0)),
        "recall": safe_ratio(tp, support),
        "f1": _f1_from_confusion(conf)[0],
        "support": support,
    }


def expected_calibration_error(probs, target, bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; as in Guo et al. 2017): the row-weighted mean |accuracy - confidence|
    over equal-width bins of the top-class probability."""
    probs, target = as_numpy(probs).astype(np.float64), as_numpy(target).reshape(-1).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(target):
        raise SegkitError(f"expected_calibration_error: {probs.shape} probabilities for {len(target)} targets")
    if not len(target):
        return 0.0
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == target)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)
