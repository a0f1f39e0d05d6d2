"""`segkit evaluate --run RUN --search` on instance runs: the watershed's thresholds tuned on validation.

Searched, maximising the mean per-image object F1 at IoU 0.5 (ties: the mean DSB score):
1. ``infer.seed_threshold`` x ``infer.seed_border`` (a grid: seed cores are ``body >= seed`` where
   border and contact are ``< border``), then
2. ``infer.threshold`` (the body threshold that makes the objects) with those seeds.
The run's own setting is always a candidate and is kept unless another scores strictly higher, so
"after" is never below "before". Tuning the seed thresholds of the seeded watershed on validation is
what the 2018 Data Science Bowl winners did (topcoders, 1st place: body/border/contact outputs,
seed and mask thresholds chosen on out-of-fold predictions).

The probabilities are predicted once (the caller keeps them); every grid point runs the same
watershed as infer (`segkit.post.watershed.watershed_instances` on the whole validation region,
which StripWatershed reproduces exactly on strips) and scores it with
`segkit.metrics.objects.object_scores`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from segkit.metrics.objects import object_scores
from segkit.post.watershed import SeedSettings, watershed_instances

SEED_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.50 .. 0.95
SEED_BORDERS = tuple(round(0.1 * k, 1) for k in range(1, 8))  # 0.1 .. 0.7
MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)

# An item: (image id, (T, h, w) float32 probabilities of the targets, true instances (h, w) int)
Loader = Callable[[], Iterable[tuple[str, np.ndarray, np.ndarray]]]


def score_seeds(loader: Loader, names: Sequence[str], settings: SeedSettings) -> dict:
    """Mean over images of object F1@0.5, DSB and the objects' pixel Dice with one watershed setting."""
    rows = []
    for _, probs, truth in loader():
        ids = watershed_instances(probs, names, settings)
        scores = object_scores(ids, truth)
        pred, true = ids != 0, truth != 0
        union = np.count_nonzero(pred) + np.count_nonzero(true)
        dice = 1.0 if union == 0 else 2 * np.count_nonzero(pred & true) / union
        rows.append((scores["f1"], scores["dsb"], dice))
    if not rows:
        return {"object_f1": 0.0, "dsb": 0.0, "dice": 0.0}
    f1, dsb, dice = np.mean(rows, axis=0)
    return {"object_f1": float(f1), "dsb": float(dsb), "dice": float(dice)}


def _key(scores: dict) -> tuple:
    # rounded: float noise between equal scores must not pick a different setting
    return round(scores["object_f1"], 9), round(scores["dsb"], 9)


def search_seeds(loader: Loader, names: Sequence[str], base: SeedSettings, *, seeds: tuple = SEED_THRESHOLDS,
                 borders: tuple = SEED_BORDERS, masks: tuple = MASK_THRESHOLDS) -> dict:
    """{"before": (setting, scores), "after": (setting, scores)}; scores as `score_seeds`."""
    before = score_seeds(loader, names, base)
    best = (base, before)

    def consider(setting: SeedSettings) -> None:
        nonlocal best
        if setting == best[0]:
            return
        scores = score_seeds(loader, names, setting)
        if _key(scores) > _key(best[1]):
            best = (setting, scores)

    for seed in seeds:
        for border in borders:
            consider(SeedSettings(mask=base.mask, seed=seed, border=border))
    for mask in masks:
        consider(SeedSettings(mask=mask, seed=best[0].seed, border=best[0].border))
    return {"before": (base, before), "after": best}
