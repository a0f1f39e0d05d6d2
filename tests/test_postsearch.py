"""evaluate --search: threshold, minimum object size and original-view weight on planted cases."""

import numpy as np
import pytest

from segkit.tune.thresholds import PostSetting, reweight, search_postprocess, threshold_curve


def _case():
    """Objects at probability 0.4 (below the default 0.5), 3-pixel specks at 0.7 in the original view;
    the flipped view is wrong everywhere (high on the background)."""
    truth = np.zeros((60, 80), bool)
    truth[10:25, 10:30] = truth[35:55, 40:70] = True
    original = np.where(truth, 0.4, 0.05).astype(np.float32)
    for r, c in ((2, 60), (50, 5), (30, 75)):
        original[r, c:c + 3] = 0.7
    flipped = np.where(truth, 0.05, 0.95).astype(np.float32)
    return [("a", {"identity": original, "hflip": flipped}, truth)]


def test_search_finds_threshold_size_and_weight():
    items = _case()
    base = PostSetting((("identity", 0.6), ("hflip", 0.4)), 0.5, 0)
    result = search_postprocess(lambda: items, base)
    setting, before = result["before"]
    assert setting == base and before < 0.5
    best, after = result["after"]
    assert after == pytest.approx(1.0)
    assert dict(best.weights)["identity"] >= 0.8  # below 0.8 the flipped view's background outweighs the objects
    assert best.min_px > 3  # the specks are gone
    assert best.tta_spec().startswith("identity:")


def test_threshold_curve_matches_direct_counting():
    items = _case()
    weights = (("identity", 0.7), ("hflip", 0.3))
    thresholds = (0.1, 0.3, 0.5, 0.7)
    curve = threshold_curve(lambda: items, weights, thresholds)
    _, views, truth = items[0]
    probs = 0.7 * views["identity"] + 0.3 * views["hflip"]
    for t, value in zip(thresholds, curve):
        mask = probs >= t
        expected = 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) if mask.any() or truth.any() else 1.0
        assert value == pytest.approx(expected)


def test_reweight_keeps_the_other_views_ratios():
    weights = (("identity", 0.4), ("hflip", 0.4), ("vflip", 0.2))
    out = dict(reweight(weights, 0.7))
    assert out["identity"] == pytest.approx(0.7)
    assert out["hflip"] == pytest.approx(0.2) and out["vflip"] == pytest.approx(0.1)
