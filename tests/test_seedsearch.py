"""evaluate --search on instance runs: the watershed's seed thresholds on a planted probability map."""

import numpy as np
import pytest

from segkit.post.watershed import SeedSettings
from segkit.tune.seeds import score_seeds, search_seeds

NAMES = ("body", "border", "contact")


def _touching_pair():
    """Two touching 20x20 objects; the body dips to 0.8 on a 4-column neck where they meet, so the
    default seeds (body >= 0.7) join across it and the two become one object (IoU 0.5 with each).
    Border and contact are low everywhere, so no seed_border separates them: only the seed threshold."""
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 10:30], truth[10:30, 30:50] = 1, 2
    body = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    body[10:30, 28:32] = 0.8
    border = np.where(truth > 0, 0.05, 0.0).astype(np.float32)
    contact = np.zeros_like(body)
    return [("pair", np.stack([body, border, contact]), truth)]


def test_stricter_seed_threshold_separates_touching_objects():
    items = _touching_pair()
    base = SeedSettings()  # mask 0.5, seed 0.7, border 0.5
    result = search_seeds(lambda: items, NAMES, base)
    setting, before = result["before"]
    assert setting == base
    assert before["object_f1"] == pytest.approx(2 / 3)  # the merged object matches one of the two
    best, after = result["after"]
    assert after["object_f1"] == pytest.approx(1.0) and after["dsb"] > before["dsb"]
    assert best.seed in (0.85, 0.9)  # above the neck, below the cores (0.95 leaves no seed)
    assert score_seeds(lambda: items, NAMES, SeedSettings(seed=0.7, border=0.1))["object_f1"] == before["object_f1"]
    assert after == score_seeds(lambda: items, NAMES, best)


def test_the_run_setting_stays_when_nothing_beats_it():
    items = _touching_pair()
    good = SeedSettings(mask=0.5, seed=0.9, border=0.5)
    result = search_seeds(lambda: items, NAMES, good)
    assert result["after"][0] == good and result["after"][1] == result["before"][1]
