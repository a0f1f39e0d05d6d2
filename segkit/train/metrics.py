"""Dice / IoU for masks and accuracy / macro F1 for classes, with per-image and per-class views.

Conventions: a prediction and a target that are both empty score 1.0 (nothing to find, nothing
found). ``DiceAccumulator.mean()`` is the mean over images of the per-image Dice (the Kaggle
HuBMAP/Sartorius style); ``global_dice()`` pools all pixels first.
"""

from __future__ import annotations

import numpy as np

from segkit.errors import SegkitError


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.ones_like(den)
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice_score(pred, target) -> float:
    """2|P & T| / (|P| + |T|) for boolean masks (numpy or torch); both empty -> 1.0."""
    p, t = _np(pred).astype(bool), _np(target).astype(bool)
    if p.shape != t.shape:
        raise SegkitError(f"dice_score: shapes differ {p.shape} vs {t.shape}")
    inter = np.count_nonzero(p & t)
    return float(_ratio(2 * inter, np.count_nonzero(p) + np.count_nonzero(t)))


def iou_score(pred, target) -> float:
    """|P & T| / |P | T| for boolean masks; both empty -> 1.0."""
    p, t = _np(pred).astype(bool), _np(target).astype(bool)
    if p.shape != t.shape:
        raise SegkitError(f"iou_score: shapes differ {p.shape} vs {t.shape}")
    return float(_ratio(np.count_nonzero(p & t), np.count_nonzero(p | t)))


class DiceAccumulator:
    """Collects per image and per class: intersection, predicted and target pixel counts.

    ``classes`` is the model's output count: 1 = binary (the foreground is scored), C > 1 =
    class-id maps with classes 1..C-1 scored (0 too with include_background). Pixels whose
    target equals ``ignore_index`` are left out.
    """

    def __init__(self, classes: int = 1, include_background: bool = False, ignore_index: int | None = None):
        self.classes = int(classes)
        if self.classes == 1:
            self.labels = [1]
        else:
            self.labels = list(range(0 if include_background else 1, self.classes))
        self.ignore_index = ignore_index
        self._rows: list[np.ndarray] = []  # each (L, 3): inter, pred, target
        self.image_ids: list = []  # one per row; None where update() was not given ids

    def add(self, pred, target, image_id=None) -> None:
        """Add one image (H,W) of class ids (or bool for binary) under ``image_id``."""
        self.update(pred, target, image_ids=None if image_id is None else [image_id])

    def update(self, pred, target, image_ids=None) -> None:
        """Add one image (H,W) or a batch (N,H,W) of class-id (or boolean for binary) maps."""
        p, t = _np(pred), _np(target)
        if p.shape != t.shape and p.squeeze().shape == t.squeeze().shape and p.ndim != t.ndim:
            p, t = p.reshape(max(p.shape, t.shape, key=len)), t.reshape(max(p.shape, t.shape, key=len))
        if p.shape != t.shape:
            raise SegkitError(f"DiceAccumulator: prediction {p.shape} and target {t.shape} differ")
        if p.ndim == 2:
            p, t = p[None], t[None]
        ids = list(image_ids) if image_ids is not None else [None] * len(p)
        if len(ids) != len(p):
            raise SegkitError(f"DiceAccumulator: {len(ids)} image ids for {len(p)} images")
        n_bins = max(self.classes, 2)
        for pi, ti in zip(p, t):
            pi, ti = pi.reshape(-1).astype(np.int64), ti.reshape(-1).astype(np.int64)
            if self.ignore_index is not None:
                keep = ti != self.ignore_index
                pi, ti = pi[keep], ti[keep]
            if self.classes == 1:
                pi, ti = (pi > 0).astype(np.int64), (ti > 0).astype(np.int64)
            if pi.size and (pi.max() >= n_bins or ti.max() >= n_bins or min(pi.min(), ti.min()) < 0):
                raise SegkitError(f"DiceAccumulator: class ids outside 0..{n_bins - 1}")
            conf = np.bincount(pi * n_bins + ti, minlength=n_bins * n_bins).reshape(n_bins, n_bins)
            rows = [(conf[c, c], conf[c].sum(), conf[:, c].sum()) for c in self.labels]
            self._rows.append(np.array(rows, dtype=np.int64))
        self.image_ids.extend(ids)

    def add_counts(self, counts: np.ndarray, image_ids=None) -> None:
        """Append counts from counts() of another accumulator (e.g. gathered from other ranks)."""
        rows = np.asarray(counts, dtype=np.int64).reshape(-1, len(self.labels), 3)
        self._rows.extend(rows)
        self.image_ids.extend(list(image_ids) if image_ids is not None else [None] * len(rows))

    def counts(self) -> np.ndarray:
        """(images, labels, 3) int64: intersection, predicted pixels, target pixels."""
        if not self._rows:
            return np.zeros((0, len(self.labels), 3), dtype=np.int64)
        return np.stack(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def _dice(self, c: np.ndarray) -> np.ndarray:
        return _ratio(2 * c[..., 0], c[..., 1] + c[..., 2])

    def per_image(self) -> np.ndarray:
        """(images,) Dice of each image, averaged over the scored classes."""
        return self._dice(self.counts()).mean(axis=1) if self._rows else np.zeros(0)

    def per_image_by_id(self) -> dict:
        """{image_id: Dice} (ids given to add()/update(); the row index where none was given)."""
        return {(i if k is None else k): float(v) for i, (k, v) in enumerate(zip(self.image_ids, self.per_image()))}

    def per_class(self, reduce: str = "image") -> np.ndarray:
        """(labels,) Dice per scored class: mean over images ("image") or pooled pixels ("global")."""
        c = self.counts()
        if not self._rows:
            return np.zeros(len(self.labels))
        if reduce == "global":
            return self._dice(c.sum(axis=0))
        if reduce == "image":
            return self._dice(c).mean(axis=0)
        raise SegkitError(f"per_class: reduce must be image or global, got {reduce!r}")

    def mean(self) -> float:
        """Mean per-image Dice (0.0 before any update)."""
        return float(self.per_image().mean()) if self._rows else 0.0

    def global_dice(self) -> float:
        return float(self.per_class("global").mean()) if self._rows else 0.0

    def iou_per_image(self) -> np.ndarray:
        c = self.counts()
        if not self._rows:
            return np.zeros(0)
        return _ratio(c[..., 0], c[..., 1] + c[..., 2] - c[..., 0]).mean(axis=1)

    def iou_mean(self) -> float:
        return float(self.iou_per_image().mean()) if self._rows else 0.0


def confusion_matrix(pred, target, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts, rows = target, columns = prediction."""
    p, t = _np(pred).reshape(-1).astype(np.int64), _np(target).reshape(-1).astype(np.int64)
    if p.shape != t.shape:
        raise SegkitError(f"confusion_matrix: {p.shape} predictions vs {t.shape} targets")
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= classes):
        raise SegkitError(f"confusion_matrix: class ids outside 0..{classes - 1}")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def accuracy(pred, target) -> float:
    p, t = _np(pred).reshape(-1), _np(target).reshape(-1)
    return float((p == t).mean()) if t.size else 0.0


def _f1_from_confusion(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    f1 = _ratio(2 * tp, support + predicted)
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
