"""Pixel and object scores against hand-computed cases, and their agreement with training's Dice."""

import numpy as np
import pytest

from segkit.report.evaluate import score_masks
from segkit.metrics.scores import mean_scores, pixel_counts, pixel_scores
from segkit.metrics.seg import DiceAccumulator


def test_binary_scores_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    counts = pixel_counts(pred, truth)
    assert counts.tolist() == [[2, 1, 1]]  # TP, FP, FN
    scores = mean_scores(counts)
    assert scores["dice"] == pytest.approx(4 / 6)
    assert scores["iou"] == pytest.approx(2 / 4)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("pred, truth, expected", [
    (np.zeros((3, 4)), np.zeros((3, 4)), {"dice": 1, "iou": 1, "precision": 1, "recall": 1}),  # nothing to find
    (np.zeros((3, 4)), np.eye(3, 4), {"dice": 0, "iou": 0, "precision": 0, "recall": 0}),  # all missed
    (np.eye(3, 4), np.zeros((3, 4)), {"dice": 0, "iou": 0, "precision": 0, "recall": 0}),  # false alarm
])
def test_empty_conventions(pred, truth, expected):
    assert mean_scores(pixel_counts(pred, truth)) == expected


def test_multiclass_per_class_hand_computed():
    pred = np.array([[1, 2], [2, 0]])
    truth = np.array([[1, 1], [2, 2]])
    counts = pixel_counts(pred, truth, classes=3)
    assert counts.tolist() == [[1, 0, 1], [1, 1, 1]]  # class 1, class 2
    per_class = pixel_scores(counts)
    assert per_class["dice"].tolist() == pytest.approx([2 / 3, 0.5])
    assert per_class["precision"].tolist() == pytest.approx([1.0, 0.5])
    assert mean_scores(counts)["dice"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_agrees_with_training_dice():
    rng = np.random.default_rng(3)
    for classes in (1, 4):
        pred, truth = rng.integers(0, max(2, classes), (2, 37, 41))
        acc = DiceAccumulator(classes=classes)
        acc.add(pred, truth)
        assert mean_scores(pixel_counts(pred, truth, classes))["dice"] == pytest.approx(acc.mean())


def test_object_counts_hand_computed():
    truth = np.zeros((20, 30), np.uint8)
    truth[2:6, 2:6] = 1      # found exactly
    truth[10:14, 10:14] = 1  # found with IoU 9/16 + ... >= 0.5
    truth[15:18, 25:28] = 1  # missed
    pred = np.zeros_like(truth)
    pred[2:6, 2:6] = 1
    pred[10:14, 11:14] = 1   # IoU 12/16 = 0.75
    pred[0:2, 20:22] = 1     # false object
    counts, objects = score_masks(pred, truth, classes=1, objects=True)
    assert objects.tolist() == [2, 1, 1]
    assert counts[0, 0] == 16 + 12
