"""Per-class precision/recall/F1 (checked against scikit-learn), the report, calibration error by hand."""

import numpy as np
import pytest

from segkit.metrics.cls import ConfusionAccumulator, expected_calibration_error, per_class_scores


def test_per_class_scores_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, target, rng.integers(0, 4, 200))
    acc = ConfusionAccumulator(4)
    acc.update(pred[:120], target[:120])
    acc.update(pred[120:], target[120:])
    p, r, f, s = metrics.precision_recall_fscore_support(target, pred, labels=range(4))
    scores = acc.per_class()
    for ours, theirs in zip((scores["precision"], scores["recall"], scores["f1"], scores["support"]), (p, r, f, s)):
        assert np.allclose(ours, theirs)
    assert acc.macro_f1() == pytest.approx(metrics.f1_score(target, pred, average="macro"))
    report = acc.report(["a", "b", "c", "d"])
    assert report["per_class"]["c"]["recall"] == pytest.approx(r[2]) and report["per_class"]["c"]["support"] == s[2]
    assert np.array_equal(report["confusion"], metrics.confusion_matrix(target, pred))


def test_a_class_never_predicted_has_precision_0_and_an_absent_one_scores_1():
    conf = np.array([[3, 0, 0], [2, 0, 0], [0, 0, 0]])  # class 1 occurs but is never predicted; class 2 never occurs
    scores = per_class_scores(conf)
    assert scores["precision"].tolist() == [0.6, 0.0, 1.0] and scores["recall"].tolist() == [1.0, 0.0, 1.0]


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    target = np.array([0, 1, 0, 1])
    # bins of width 0.1: {0.9, 0.9} accuracy 0.5; {0.6} accuracy 1; {0.7} accuracy 1
    assert expected_calibration_error(probs, target, bins=10) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0


def test_confusion_png(tmp_path):
    import cv2

    from segkit.ground.errors import SegkitError
    from segkit.runs.plots import plot_confusion

    path = plot_confusion([[5, 1, 0], [0, 3, 2], [1, 0, 7]], ["cat", "dog", "bird"], tmp_path / "plots" / "c.png")
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) > 200
    with pytest.raises(SegkitError, match="2 class names"):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
