"""Dice / IoU for masks, with per-image and per-class views.

Conventions: a prediction and a target that are both empty score 1.0 (nothing to find, nothing
found). ``DiceAccumulator.mean()`` is the mean over images of the per-image Dice (the Kaggle
HuBMAP/Sartorius style); ``global_dice()`` pools all pixels first.
"""

from __future__ import annotations

import numpy as np

from segkit.ground.errors import SegkitError


def as_numpy(x) -> np.ndarray:
    """A numpy view of a numpy array or a (detached, CPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 1.0 where den is 0 (both empty: nothing to find, nothing found)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.ones_like(den)
    np.divide(num, den, out=out, where=den > 0)
    return out


def f1_from_counts(tp, fp, fn):
    """2 TP / (2 TP + FP + FN): the Dice of pixels and the F1 of objects or classes, the one copy of
    the rule. 1.0 where TP + FP + FN = 0 (nothing to find, nothing found). Arrays give arrays."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    out = safe_ratio(2 * tp, 2 * tp + fp + fn)
    return float(out) if out.ndim == 0 else out


def dice_score(pred, target) -> float:
    """2|P & T| / (|P| + |T|) for boolean masks (numpy or torch); both empty -> 1.0."""
    p, t = as_numpy(pred).astype(bool), as_numpy(target).astype(bool)
    if p.shape != t.shape:
        raise SegkitError(f"dice_score: shapes differ {p.shape} vs {t.shape}")
    inter = np.count_nonzero(p & t)
    return f1_from_counts(inter, np.count_nonzero(p) - inter, np.count_nonzero(t) - inter)


def iou_score(pred, target) -> float:
    """|P & T| / |P | T| for boolean masks; both empty -> 1.0."""
    p, t = as_numpy(pred).astype(bool), as_numpy(target).astype(bool)
    if p.shape != t.shape:
        raise SegkitError(f"iou_score: shapes differ {p.shape} vs {t.shape}")
    return float(safe_ratio(np.count_nonzero(p & t), np.count_nonzero(p | t)))


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
        p, t = as_numpy(pred), as_numpy(target)
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
        return f1_from_counts(c[..., 0], c[..., 1] - c[..., 0], c[..., 2] - c[..., 0])

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
        return safe_ratio(c[..., 0], c[..., 1] + c[..., 2] - c[..., 0]).mean(axis=1)

    def iou_mean(self) -> float:
        return float(self.iou_per_image().mean()) if self._rows else 0.0
