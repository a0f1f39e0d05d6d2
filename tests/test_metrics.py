"""Dice / IoU and the accumulators, against hand-computed values."""

import numpy as np
import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.metrics.cls import (
    ConfusionAccumulator,
    accuracy,
    confusion_matrix,
    macro_f1,
)
from segkit.metrics.seg import DiceAccumulator, dice_score, iou_score


def test_dice_and_iou_exact():
    pred = np.zeros((5, 7), bool)
    target = np.zeros((5, 7), bool)
    pred[0, :4] = True  # 4 px
    target[0, 2:8] = True  # 5 px, overlap 2
    assert dice_score(pred, target) == pytest.approx(2 * 2 / 9)
    assert iou_score(pred, target) == pytest.approx(2 / 7)
    assert dice_score(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(4 / 9)


def test_both_empty_is_one_and_one_empty_is_zero():
    empty = np.zeros((3, 4), bool)
    full = np.ones((3, 4), bool)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0 and dice_score(empty, full) == 0.0
    with pytest.raises(SegkitError, match="shapes"):
        dice_score(empty, np.zeros((4, 3), bool))


def test_binary_accumulator_per_image_and_global():
    acc = DiceAccumulator(1)
    a_p, a_t = np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8)
    a_p[0, :2] = 1
    a_t[0, :2] = 1  # perfect: 1.0
    b_p, b_t = np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8)
    b_p[1, :4] = 1
    b_t[1, 2:5] = 1  # 2*2/(4+3)
    c = np.zeros((4, 5), np.uint8)  # both empty: 1.0
    acc.update(np.stack([a_p, b_p]), np.stack([a_t, b_t]))
    acc.update(torch.from_numpy(c), torch.from_numpy(c))
    assert np.allclose(acc.per_image(), [1.0, 4 / 7, 1.0])
    assert acc.mean() == pytest.approx((2 + 4 / 7) / 3)
    assert acc.global_dice() == pytest.approx(2 * (2 + 2) / (2 + 2 + 4 + 3))
    assert acc.iou_per_image()[1] == pytest.approx(2 / 5)
    assert len(acc) == 3 and acc.counts().shape == (3, 1, 3)


def test_multiclass_accumulator_per_class_and_ignore():
    target = np.array([[0, 1, 1, 2], [2, 2, 0, 255]])
    pred = np.array([[0, 1, 2, 2], [2, 0, 0, 1]])
    acc = DiceAccumulator(3, ignore_index=255)
    acc.update(pred, target)
    # class 1: inter 1, pred 1, target 2 -> 2/3 ; class 2: inter 2, pred 3, target 3 -> 4/6
    assert np.allclose(acc.per_class(), [2 / 3, 4 / 6])
    assert np.allclose(acc.per_class("global"), [2 / 3, 4 / 6])
    assert acc.mean() == pytest.approx((2 / 3 + 4 / 6) / 2)
    with_bg = DiceAccumulator(3, include_background=True, ignore_index=255)
    with_bg.update(pred, target)
    assert with_bg.per_class()[0] == pytest.approx(2 * 2 / (3 + 2))
    merged = DiceAccumulator(3, ignore_index=255)
    merged.add_counts(acc.counts())
    assert merged.mean() == acc.mean()
    with pytest.raises(SegkitError, match="class ids"):
        DiceAccumulator(3).update(np.array([[5]]), np.array([[0]]))


def test_classification_metrics_match_hand_values():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    assert accuracy(pred, target) == pytest.approx(4 / 6)
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1 = [2 * 1 / (2 + 2), 2 * 2 / (2 + 3), 2 * 1 / (2 + 1)]
    assert macro_f1(pred, target, 3) == pytest.approx(np.mean(f1))
    acc = ConfusionAccumulator(3)
    acc.update(pred[:3], target[:3])
    acc.update(torch.from_numpy(pred[3:]), torch.from_numpy(target[3:]))
    assert acc.accuracy() == pytest.approx(4 / 6)
    assert acc.macro_f1() == pytest.approx(np.mean(f1))
    # a class absent from both predictions and targets does not drag the macro mean down
    assert macro_f1(np.array([0, 1]), np.array([0, 1]), 5) == 1.0


def test_add_with_image_ids_and_singleton_channel():
    acc = DiceAccumulator()
    m = np.zeros((3, 4), np.uint8)
    m[1, 1:3] = 1
    acc.add(m, m, image_id="a")
    acc.add(m[None], m, image_id="b")  # (1,H,W) prediction against an (H,W) target
    acc.add(np.zeros_like(m), m, image_id="c")
    assert acc.per_image_by_id() == {"a": 1.0, "b": 1.0, "c": 0.0}
    with pytest.raises(SegkitError, match="image ids"):
        acc.update(np.stack([m, m]), np.stack([m, m]), image_ids=["x"])


def test_an_empty_accumulator_scores_zero_and_class_ids_are_checked_at_the_edges():
    """No image seen is no evidence: 0.0 (a validation that scored nothing must not look like the
    best epoch); an image whose prediction and target are both empty is 1.0 (nothing to find)."""
    acc = DiceAccumulator(3)
    assert (acc.mean(), acc.global_dice(), acc.iou_mean()) == (0.0, 0.0, 0.0)
    assert acc.per_image().shape == (0,) and acc.per_class().tolist() == [0.0, 0.0]
    assert acc.per_class("global").tolist() == [0.0, 0.0] and acc.counts().shape == (0, 2, 3)
    acc.update(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64))
    assert (acc.mean(), acc.global_dice(), acc.iou_mean()) == (1.0, 1.0, 1.0)
    # the largest and smallest valid class ids pass; one past either end is refused
    ok = DiceAccumulator(3)
    ok.update(np.array([[2, 0]]), np.array([[0, 2]]))
    assert ok.per_class().tolist() == [1.0, 0.0]
    for pred, target in [([[3]], [[0]]), ([[0]], [[3]]), ([[-1]], [[0]]), ([[0]], [[-1]])]:
        with pytest.raises(SegkitError, match=r"class ids outside 0\.\.2"):
            DiceAccumulator(3).update(np.array(pred), np.array(target))
    # binary: any positive value is foreground
    binary = DiceAccumulator()
    binary.update(np.array([[7, 0, 1]]), np.array([[1, 0, 0]]))
    assert binary.mean() == pytest.approx(2 / 3)
    with pytest.raises(SegkitError, match="reduce must be image or global, got 'pixel'"):
        ok.per_class("pixel")
