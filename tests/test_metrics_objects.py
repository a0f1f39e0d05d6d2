"""Object matching, object F1 and the DSB score against hand-computed cases."""

import numpy as np
import pytest

from segkit.metrics.objects import DSB_THRESHOLDS, dsb_score, label_components, match_objects, object_f1, object_scores


def _scene():
    """True: A 4x4 (id 1), B 4x4 (id 2), C 2x2 (id 5). Pred: 7 inside A (IoU 12/16), 3 over B (16/24), 9 stray."""
    true = np.zeros((10, 11), np.int32)
    true[0:4, 0:4] = 1
    true[0:4, 6:10] = 2
    true[6:8, 0:2] = 5
    pred = np.zeros((10, 11), np.uint32)
    pred[0:4, 0:3] = 7
    pred[0:4, 4:10] = 3
    pred[8:10, 8:10] = 9
    return pred, true


def test_match_objects_iou_pairs_and_dense_matrix():
    pred, true = _scene()
    match = match_objects(pred, true)
    assert match.pred_ids.tolist() == [3, 7, 9] and match.true_ids.tolist() == [1, 2, 5]
    assert match.pred_area.tolist() == [24, 12, 4] and match.true_area.tolist() == [16, 16, 4]
    expected = np.zeros((3, 3))
    expected[0, 1] = 16 / 24  # pred 3 vs B
    expected[1, 0] = 12 / 16  # pred 7 vs A
    np.testing.assert_allclose(match.matrix(), expected)
    assert sorted(map(tuple, match.matches(0.5).tolist())) == [(0, 1), (1, 0)]
    assert match.matches(0.7).tolist() == [[1, 0]]  # 0.75 >= 0.7 (inclusive), 0.667 is not


def test_object_f1_and_dsb_hand_computed():
    pred, true = _scene()
    scores = object_f1(pred, true)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 1, 1)
    assert scores["f1"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    # thresholds 0.50-0.65: 2 TP, 1 FP, 1 FN -> 2/4; 0.70-0.75: 1 TP, 2 FP, 2 FN -> 1/5; 0.80-0.95: 0
    assert dsb_score(pred, true) == pytest.approx((4 * 0.5 + 2 * 0.2) / 10)
    assert object_f1(pred, true, iou=0.8)["f1"] == 0.0
    both = object_scores(pred, true)
    assert both["dsb"] == pytest.approx(0.24) and both["f1"] == pytest.approx(4 / 6)
    assert (both["n_pred"], both["n_true"]) == (3, 3)
    assert DSB_THRESHOLDS[0] == 0.5 and DSB_THRESHOLDS[-1] == 0.95 and len(DSB_THRESHOLDS) == 10


def test_merged_prediction_matches_one_object_only():
    """Two touching true squares predicted as one object: IoU 16/32 with each; one-to-one gives 1 TP, 1 FN."""
    true = np.zeros((4, 8), np.int32)
    true[:, :4], true[:, 4:] = 1, 2
    pred = (true > 0).astype(np.int32)
    scores = object_f1(pred, true)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 1)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert dsb_score(pred, true) == pytest.approx(0.5 / 10)  # only the 0.5 threshold matches: 1/2
    # split correctly: perfect
    assert object_f1(true.copy(), true)["f1"] == 1.0 and dsb_score(true.copy(), true) == 1.0


def test_empty_cases():
    empty = np.zeros((5, 6), np.int32)
    one = empty.copy()
    one[1:3, 1:3] = 4
    assert object_f1(empty, empty)["f1"] == 1.0 and dsb_score(empty, empty) == 1.0
    assert object_f1(empty, one) == {"tp": 0, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.0, "f1": 0.0}
    assert dsb_score(one, empty) == 0.0
    with pytest.raises(ValueError, match="differ"):
        match_objects(empty, np.zeros((6, 5), np.int32))
    with pytest.raises(ValueError, match="integer"):
        match_objects(empty.astype(np.float32), empty)


def test_label_components_connectivity():
    mask = np.zeros((5, 7), np.uint8)
    mask[0:2, 0:2] = 1
    mask[2:4, 2:4] = 1  # touches the first block only at a corner
    mask[0, 6] = 1
    eight, four = label_components(mask), label_components(mask, connectivity=4)
    assert eight.dtype == np.int32 and eight.max() == 2 and four.max() == 3
    assert len(np.unique(eight[mask > 0])) == 2 and (eight[mask == 0] == 0).all()
    assert object_f1(label_components(mask, 4), label_components(mask, 4))["tp"] == 3


def test_object_f1_edge_counts_are_exact():
    """One matched object and one false positive (tp == fp): precision 0.5, not the empty-case 1.0;
    no true objects at all: recall 1.0 by convention. One-pixel objects match with IoU 1."""
    from segkit.metrics.objects import object_f1

    true = np.zeros((6, 8), np.int32)
    true[1, 1] = 1
    pred = true.copy()
    pred[4, 6] = 2  # a false positive
    got = object_f1(pred, true)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 0)
    assert got["precision"] == 0.5 and got["recall"] == 1.0 and got["f1"] == pytest.approx(2 / 3)
    empty = object_f1(pred, np.zeros_like(true))
    assert (empty["tp"], empty["fp"], empty["fn"]) == (0, 2, 0) and empty["recall"] == 1.0
    assert empty["precision"] == 0.0
    assert match_objects(true, true).iou.tolist() == [1.0]  # a one-pixel object is its own match, IoU 1
