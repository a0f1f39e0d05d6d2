"""`segkit evaluate --run RUN --search`: post-processing tuned on the validation predictions.

Searched (binary runs), maximising the mean per-image Dice (the number training reports):
1. the weight of the original TTA view (the other views keep their ratios), jointly with
2. the probability threshold, then
3. the minimum object size (objects smaller are removed, as `infer.min_object_px` does),
then the threshold once more with that minimum size. This is the threshold pair that won the
SIIM-ACR Pneumothorax contest (1st place: a pixel threshold and a minimum-area threshold tuned on
validation), with the TTA weight added.

The threshold search is exact and cheap: per image and view weighting, two histograms of the
probabilities (truth pixels, background pixels) over the threshold grid give TP and FP of every
threshold at once (`np.digitize` + suffix sums), so only one pass over the pixels is made per
weighting. The minimum size needs the components, so each size is applied in turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from segkit.post.morphology import fill_holes, remove_small_objects
from segkit.metrics.scores import pixel_scores

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 19))  # 0.10 .. 0.90
ORIGINAL_WEIGHTS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MIN_SIZES = (0, 8, 16, 32, 64, 128, 256, 512)

# An item: (image id, {view: probs HW float32}, truth HW bool); a loader yields them again on each call
Loader = Callable[[], Iterable[tuple[str, dict, np.ndarray]]]


@dataclass(frozen=True)
class PostSetting:
    weights: tuple  # ((view, weight), ...) summing to 1
    threshold: float
    min_px: int
    fill: bool = False  # infer.fill_holes: kept as the run has it, not searched

    def tta_spec(self) -> str:
        return ",".join(f"{view}:{weight:.4g}" for view, weight in self.weights)


def reweight(weights: tuple, original: float) -> tuple:
    """The original view ('identity') at `original`, the other views sharing the rest in their ratios."""
    others = [(v, w) for v, w in weights if v != "identity"]
    rest = sum(w for _, w in others)
    if not others:
        return (("identity", 1.0),)
    if rest <= 0:
        others, rest = [(v, 1.0) for v, _ in others], float(len(others))
    scaled = tuple((v, (1 - original) * w / rest) for v, w in others)
    return ((("identity", original),) if original > 0 else ()) + tuple((v, w) for v, w in scaled if w > 0)


def combine(views: dict, weights: tuple) -> np.ndarray:
    out = None
    for view, weight in weights:
        part = views[view] * np.float32(weight)
        out = part if out is None else out + part
    return out


def post_mask(mask: np.ndarray, min_px: int, fill: bool) -> np.ndarray:
    """What infer's post-processing does to a thresholded mask: small objects removed, then holes filled."""
    out = mask.astype(np.uint8)
    if min_px > 1:
        out = remove_small_objects(out, min_px)
    if fill:
        out = fill_holes(out)
    return out != 0


def _dice_by_image(counts: dict) -> float:
    """Mean over images of the Dice of their pooled (TP, FP, FN) counts, per grid point: (..., ) arrays."""
    return np.mean([pixel_scores(np.moveaxis(c, 0, -1))["dice"] for c in counts.values()], axis=0)


def threshold_curve(loader: Loader, weights: tuple, thresholds: tuple, min_px: int = 0, fill: bool = False) -> np.ndarray:
    """Mean per-image Dice at each threshold for one view weighting (and a fixed minimum size)."""
    edges = np.asarray(thresholds, np.float64)
    counts: dict = {}
    for image_id, views, truth in loader():
        probs = combine(views, weights)
        if min_px > 1 or fill:  # components depend on the threshold: one mask per threshold
            tp, pred = [], []
            for t in thresholds:
                mask = post_mask(probs >= t, min_px, fill)
                tp.append(np.count_nonzero(mask & truth))
                pred.append(np.count_nonzero(mask))
            tp, pred = np.array(tp), np.array(pred)
        else:
            bins = np.digitize(probs, edges)  # k: edges[k-1] <= p < edges[k]; p >= edges[j] <=> bin > j
            on = np.bincount(bins[truth], minlength=edges.size + 1)
            off = np.bincount(bins[~truth], minlength=edges.size + 1)
            tp = np.cumsum(on[::-1])[::-1][1:]
            pred = tp + np.cumsum(off[::-1])[::-1][1:]
        true = np.count_nonzero(truth)
        c = np.stack([tp, pred - tp, true - tp]).astype(np.int64)  # (3, thresholds)
        counts[image_id] = counts.get(image_id, 0) + c
    return _dice_by_image(counts)


def size_curve(loader: Loader, weights: tuple, threshold: float, sizes: tuple, fill: bool = False) -> np.ndarray:
    counts: dict = {}
    for image_id, views, truth in loader():
        mask = combine(views, weights) >= threshold
        rows = []
        for size in sizes:
            kept = post_mask(mask, size, fill)
            tp = np.count_nonzero(kept & truth)
            rows.append((tp, np.count_nonzero(kept) - tp, np.count_nonzero(truth) - tp))
        counts[image_id] = counts.get(image_id, 0) + np.array(rows, np.int64).T
    return _dice_by_image(counts)


def search_postprocess(loader: Loader, base: PostSetting, *, thresholds: tuple = THRESHOLDS,
                       originals: tuple = ORIGINAL_WEIGHTS, sizes: tuple = MIN_SIZES) -> dict:
    """{"before": (setting, dice), "after": (setting, dice)}; the run's own setting is always a candidate."""
    thresholds = tuple(sorted(set(thresholds) | {base.threshold}))
    sizes = tuple(sorted(set(sizes) | {base.min_px}))
    weightings = [base.weights]
    if len(base.weights) > 1:
        weightings += [reweight(base.weights, w) for w in originals]
    fill = base.fill
    before = float(size_curve(loader, base.weights, base.threshold, (base.min_px,), fill)[0])
    best = (before, base.weights, base.threshold)
    for weights in weightings:
        curve = threshold_curve(loader, weights, thresholds, base.min_px, fill)
        k = int(np.argmax(curve))
        if curve[k] > best[0] + 1e-12:
            best = (float(curve[k]), weights, thresholds[k])
    _, weights, threshold = best
    sizes_curve = size_curve(loader, weights, threshold, sizes, fill)
    min_px = sizes[int(np.argmax(sizes_curve))]
    curve = threshold_curve(loader, weights, thresholds, min_px, fill)  # the threshold again, with that size
    k = int(np.argmax(curve))
    after = PostSetting(weights, thresholds[k], min_px, fill)
    return {"before": (base, before), "after": (after, float(curve[k]))}
