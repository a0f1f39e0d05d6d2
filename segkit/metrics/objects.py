"""Object-level scores: instances matched one-to-one by IoU, object F1 and the Data Science Bowl score.

Instances are integer id maps (0 = background, any other value = one object; ids need not be
consecutive). Conventions:

- a predicted and a true object match when their IoU is >= the threshold (as stardist's
  ``matching``; the Kaggle DSB text says ">", which differs only on exact ties);
- matching is one-to-one, greedy by decreasing IoU. Above IoU 0.5 two objects of one map cannot
  both overlap the same object of the other that much, so greedy is the optimal assignment there;
- an image with no true and no predicted object scores 1.0 (nothing to find, nothing found).

This module is pure numpy + OpenCV on purpose: `segkit evaluate` and validation both import it,
and it has no view of segkit's files or config.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segkit.metrics.seg import f1_from_counts

#: IoU thresholds of the 2018 Data Science Bowl score: 0.50, 0.55, ..., 0.95.
DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def label_components(mask, connectivity: int = 8) -> np.ndarray:
    """Connected components of a binary mask as int32 instances (1..N, 0 = background).

    ``connectivity`` 8 (default, as skimage.measure.label on 2-D masks) or 4.
    OpenCV's connectedComponents is used because OpenCV is already a core dependency.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"label_components: connectivity must be 4 or 8, not {connectivity}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label_components: expected a 2-D mask, got shape {mask.shape}")
    _, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return labels.astype(np.int32, copy=False)


@dataclass
class ObjectMatch:
    """Every overlapping (predicted, true) pair of two instance maps with its IoU.

    ``pred_ids`` / ``true_ids``: the object ids present in each map (sorted, background left out);
    ``pred_area`` / ``true_area``: their pixel counts; ``pairs``: (K, 2) indices into pred_ids and
    true_ids of the pairs that overlap; ``iou``: (K,) their IoU; ``intersection``: (K,) pixels.
    Stored sparsely because a slide can hold 10^5 objects, whose dense IoU matrix would not fit.
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_area: np.ndarray
    true_area: np.ndarray
    pairs: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray

    def matrix(self) -> np.ndarray:
        """The dense (n_pred, n_true) IoU matrix (zeros where objects do not overlap)."""
        out = np.zeros((len(self.pred_ids), len(self.true_ids)), dtype=np.float64)
        out[self.pairs[:, 0], self.pairs[:, 1]] = self.iou
        return out

    def matches(self, iou: float = 0.5) -> np.ndarray:
        """(M, 2) one-to-one matched index pairs with IoU >= ``iou``, greedy by decreasing IoU."""
        keep = np.flatnonzero(self.iou >= iou)
        keep = keep[np.argsort(-self.iou[keep], kind="stable")]
        used_p, used_t, out = set(), set(), []
        for k in keep:
            p, t = int(self.pairs[k, 0]), int(self.pairs[k, 1])
            if p not in used_p and t not in used_t:
                used_p.add(p)
                used_t.add(t)
                out.append((p, t))
        return np.array(out, dtype=np.int64).reshape(-1, 2)

    def counts(self, iou: float = 0.5) -> tuple[int, int, int]:
        """(tp, fp, fn) at one IoU threshold."""
        tp = len(self.matches(iou))
        return tp, len(self.pred_ids) - tp, len(self.true_ids) - tp


def _check(pred_instances, true_instances) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred_instances), np.asarray(true_instances)
    if p.shape != t.shape:
        raise ValueError(f"object metrics: predicted instances {p.shape} and true instances {t.shape} differ")
    if p.dtype.kind not in "biu" or t.dtype.kind not in "biu":
        raise ValueError(f"object metrics: instances must be integer id maps, got {p.dtype} and {t.dtype}")
    return p.reshape(-1), t.reshape(-1)


def match_objects(pred_instances, true_instances) -> ObjectMatch:
    """Overlaps and IoU of every predicted object with every true object (see ObjectMatch).

    One pass over the pixels: ids are mapped to compact indices and each overlapping pixel's
    (pred, true) pair is counted with np.unique, so the cost is O(pixels log pixels) whatever
    the number of objects.
    """
    p, t = _check(pred_instances, true_instances)
    pred_ids, pred_inverse, pred_area = np.unique(p, return_inverse=True, return_counts=True)
    true_ids, true_inverse, true_area = np.unique(t, return_inverse=True, return_counts=True)
    # np.unique sorts, so background 0 (when present) is index 0; drop it from both sides.
    p_off, t_off = int(pred_ids.size > 0 and pred_ids[0] == 0), int(true_ids.size > 0 and true_ids[0] == 0)
    n_true = max(len(true_ids) - t_off, 1)
    both = (p != 0) & (t != 0)
    key = (pred_inverse[both].astype(np.int64) - p_off) * n_true + (true_inverse[both] - t_off)
    key, inter = np.unique(key, return_counts=True)
    pairs = np.stack([key // n_true, key % n_true], axis=1).astype(np.int64)
    pred_area, true_area = pred_area[p_off:], true_area[t_off:]
    union = pred_area[pairs[:, 0]] + true_area[pairs[:, 1]] - inter
    return ObjectMatch(pred_ids=pred_ids[p_off:], true_ids=true_ids[t_off:], pred_area=pred_area,
                       true_area=true_area, pairs=pairs, iou=inter / np.maximum(union, 1),
                       intersection=inter)


def object_f1(pred_instances, true_instances, iou: float = 0.5) -> dict:
    """Object F1 at one IoU threshold: dict(tp, fp, fn, precision, recall, f1).

    F1 = 2 TP / (2 TP + FP + FN); precision and recall are 1.0 when their denominator is 0.
    """
    match = match_objects(pred_instances, true_instances)
    tp, fp, fn = match.counts(iou)
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": 1.0 if tp + fp == 0 else tp / (tp + fp),
            "recall": 1.0 if tp + fn == 0 else tp / (tp + fn),
            "f1": f1_from_counts(tp, fp, fn)}


def dsb_score(pred_instances, true_instances, thresholds=DSB_THRESHOLDS) -> float:
    """The 2018 Data Science Bowl score of one image: mean over IoU thresholds of TP / (TP + FP + FN).

    Thresholds 0.5:0.05:0.95 (https://www.kaggle.com/c/data-science-bowl-2018/overview/evaluation).
    """
    match = match_objects(pred_instances, true_instances)
    return float(np.mean([_precision_at(match, t) for t in thresholds]))


def _precision_at(match: ObjectMatch, threshold: float) -> float:
    tp, fp, fn = match.counts(threshold)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def object_scores(pred_instances, true_instances, iou: float = 0.5) -> dict:
    """Object F1 at ``iou`` and the DSB score from one matching: dict(tp, fp, fn, f1, dsb, n_pred, n_true)."""
    match = match_objects(pred_instances, true_instances)
    tp, fp, fn = match.counts(iou)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": f1_from_counts(tp, fp, fn),
            "dsb": float(np.mean([_precision_at(match, t) for t in DSB_THRESHOLDS])),
            "n_pred": len(match.pred_ids), "n_true": len(match.true_ids)}
