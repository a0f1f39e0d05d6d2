"""Temperature scaling: recovers a planted temperature, lowers the NLL, keeps labels, saved with the run."""

import numpy as np
import pytest

from segkit.ground.errors import SegkitError
from segkit.infer.calibrate import ensemble_probs, fit_temperature, load_calibration, nll, save_calibration


def _overconfident(rows=2000, classes=4, true_t=3.0, seed=0):
    """Targets drawn from softmax(z); the 'model' reports z * true_t, i.e. over-confident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (rows, classes))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    targets = np.array([rng.choice(classes, p=row) for row in p])
    return z * true_t, targets


def test_recovers_the_planted_temperature_and_lowers_nll():
    logits, targets = _overconfident()
    t = fit_temperature(logits, [1.0], targets)
    assert 2.6 < t < 3.4
    before, after = nll(ensemble_probs(logits[None], [1.0]), targets), nll(ensemble_probs(logits[None], [1.0], t), targets)
    assert after < 0.8 * before
    assert np.array_equal(ensemble_probs(logits[None], [1.0], t).argmax(1), logits.argmax(1))


def test_ensemble_members_share_one_temperature():
    logits, targets = _overconfident(rows=600)
    members = np.stack([logits, logits * 1.1])
    probs = ensemble_probs(members, [0.6, 0.4], 2.0)
    manual = 0.6 * ensemble_probs(logits[None] / 2.0, [1.0]) + 0.4 * ensemble_probs(logits[None] * 1.1 / 2.0, [1.0])
    assert np.allclose(probs, manual) and np.allclose(probs.sum(1), 1)
    assert fit_temperature(members, [0.6, 0.4], targets) > 2


def test_saved_with_the_run(tmp_path):
    assert load_calibration(tmp_path) is None
    save_calibration(tmp_path, {"temperature": 1.7, "rows": 10})
    assert load_calibration(tmp_path)["temperature"] == 1.7
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(SegkitError, match="calibration.json: cannot read"):
        load_calibration(tmp_path)
    with pytest.raises(SegkitError, match="3 predictions for 2"):
        fit_temperature(np.zeros((3, 2)), [1.0], [0, 1])
