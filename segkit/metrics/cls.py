"""Accuracy, macro F1 and the confusion matrix for class predictions (images, tiles or pixels)."""

from __future__ import annotations

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.metrics.seg import as_numpy, safe_ratio


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
    f1 = safe_ratio(2 * tp, support + predicted)
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
