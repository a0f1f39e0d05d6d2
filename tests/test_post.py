"""Threshold, small-object removal, hole filling; strip-wise processing equals full-image."""

import numpy as np
import pytest
from conftest import row_strips
from scipy import ndimage

from segkit.post.morphology import (
    StripPostProcessor,
    fill_holes,
    remove_small_objects,
    threshold,
)


def test_threshold_binary():
    p = np.array([[[0.1, 0.5, 0.49, 0.9]]], np.float32)
    np.testing.assert_array_equal(threshold(p, 0.5), [[0, 1, 0, 1]])
    np.testing.assert_array_equal(threshold(p, [0.3]), [[0, 1, 1, 1]])
    assert threshold(p).dtype == np.uint8


def test_threshold_softmax_with_background_channel():
    # pixels: background wins, class 1 wins (0.6), class 2 wins but under its threshold, class 2 passes
    p = np.array([
        [0.7, 0.2, 0.3, 0.1],
        [0.2, 0.6, 0.2, 0.1],
        [0.1, 0.2, 0.5, 0.8],
    ], np.float32)[:, None, :]
    np.testing.assert_array_equal(threshold(p, 0.5), [[0, 1, 2, 2]])
    p_low = np.array([[0.3], [0.35], [0.35 + 1e-3]], np.float32)[:, None, :]  # argmax 0.351 < 0.5
    np.testing.assert_array_equal(threshold(p_low), [[2]])  # default for softmax: plain argmax
    np.testing.assert_array_equal(threshold(p_low, 0.5), [[0]])
    np.testing.assert_array_equal(threshold(p, [0.5, 0.6]), [[0, 1, 0, 2]])
    np.testing.assert_array_equal(threshold(p, [0.0, 0.7, 0.6]), [[0, 0, 0, 2]])  # C values: first ignored
    with pytest.raises(ValueError, match="4 thresholds for 2 foreground classes"):
        threshold(p, [0.1, 0.2, 0.3, 0.4])


def test_threshold_multilabel_without_background():
    p = np.array([
        [0.9, 0.2, 0.6, 0.1],
        [0.2, 0.6, 0.7, 0.3],
    ], np.float32)[:, None, :]
    np.testing.assert_array_equal(threshold(p, 0.5, background_channel=False), [[1, 2, 2, 0]])
    np.testing.assert_array_equal(threshold(p, background_channel=False), [[1, 2, 2, 0]])  # default 0.5
    np.testing.assert_array_equal(threshold(p, [0.5, 0.65], background_channel=False), [[1, 0, 2, 0]])


def _sample_mask():
    m = np.zeros((12, 10), np.uint8)
    m[1, 1] = 1                      # 1 px
    m[3:5, 3:5] = 1                  # 4 px
    m[0:3, 7:10] = 2                 # 9 px of class 2 touching the border
    m[6, 6] = 2                      # 1 px of class 2
    m[7, 7] = 2                      # diagonal to it: separate with 4-connectivity
    m[9:12, 0:5] = 1                 # 15 px
    m[10, 5] = 2                     # class 2 next to class 1: its own object
    return m


def test_remove_small_objects_exact():
    m = _sample_mask()
    out = remove_small_objects(m, 4)
    expected = m.copy()
    expected[1, 1] = 0
    expected[6, 6] = expected[7, 7] = expected[10, 5] = 0
    np.testing.assert_array_equal(out, expected)
    out8 = remove_small_objects(m, 2, connectivity=8)
    expected8 = m.copy()
    expected8[1, 1] = expected8[10, 5] = 0
    np.testing.assert_array_equal(out8, expected8)
    np.testing.assert_array_equal(remove_small_objects(m, 0), m)
    assert remove_small_objects(m, 16).sum() == 0


def test_fill_holes_binary_matches_scipy():
    rng = np.random.default_rng(3)
    m = (rng.random((40, 33)) < 0.55).astype(np.uint8)
    expected = ndimage.binary_fill_holes(m).astype(np.uint8)
    assert (expected != m).sum() > 5  # the sample has holes
    np.testing.assert_array_equal(fill_holes(m), expected)


def test_fill_holes_multiclass_and_max_size():
    m = np.zeros((9, 12), np.uint8)
    m[1:6, 1:6] = 1
    m[2:5, 2:5] = 0                  # 9 px hole in class 1
    m[1:4, 7:11] = 2
    m[2, 8] = 0                      # 1 px hole in class 2
    m[6:9, 7:10] = 1
    m[6:9, 10] = 2                   # no hole: region at the border
    m[7, 8] = 0                      # hole in class 1
    # a background region bordered by two classes stays
    m2 = np.zeros((5, 6), np.uint8)
    m2[:, :] = 1
    m2[:, 3:] = 2
    m2[2, 2:4] = 0
    out = fill_holes(m)
    exp = m.copy()
    exp[2:5, 2:5] = 1
    exp[2, 8] = 2
    exp[7, 8] = 1
    np.testing.assert_array_equal(out, exp)
    small = fill_holes(m, max_hole_px=1)
    exp_small = m.copy()
    exp_small[2, 8] = 2
    exp_small[7, 8] = 1
    np.testing.assert_array_equal(small, exp_small)
    np.testing.assert_array_equal(fill_holes(m2), m2)


def _strip_mask(h=61, w=29, seed=0):
    """Objects of many sizes, thin tall ones and holes crossing strip boundaries."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(25):
        r, c = rng.integers(0, h), rng.integers(0, w)
        hh, ww = rng.integers(1, 9), rng.integers(1, 5)
        m[r:r + hh, c:c + ww] = rng.integers(1, 3)
    m[5:40, 20] = 1                  # thin tall object: 35 px over many strips
    m[10:30, 2:9] = 2
    m[12:28, 4:7] = 0                # 48 px hole crossing strips
    m[44:50, 12:18] = 1
    m[46:48, 14:16] = 0              # 4 px hole
    return m


@pytest.mark.parametrize("heights", [[1], [4, 7], [16], [61]])
@pytest.mark.parametrize("min_px,max_hole,conn", [(0, 10, 4), (5, 0, 4), (36, 50, 4), (40, 3, 8), (6, None, 8),
                                                  (3, None, 4)])
def test_strip_post_processor_equals_full_image(heights, min_px, max_hole, conn):
    m = _strip_mask()
    expected = fill_holes(remove_small_objects(m, min_px, connectivity=conn), max_hole)
    proc = StripPostProcessor(*m.shape, min_px=min_px, max_hole_px=max_hole, fill=True, connectivity=conn)
    extra = np.stack([m, m * 2]).astype(np.float32)  # rides along, stays aligned
    out = list(proc((r0, s, extra[:, r0:r0 + s.shape[0]]) for r0, s in row_strips(m, heights)))
    rows = [r0 for r0, _, _ in out]
    assert rows == sorted(rows) and rows[0] == 0
    np.testing.assert_array_equal(np.concatenate([s for _, s, _ in out]), expected)
    np.testing.assert_array_equal(np.concatenate([e for _, _, e in out], axis=1), extra)
    if min_px > 1 and heights != [61]:
        # cutting the strips without context would be wrong: the test data makes that visible
        naive = np.concatenate([remove_small_objects(s, min_px, connectivity=conn) for _, s in row_strips(m, heights)])
        assert not np.array_equal(naive, remove_small_objects(m, min_px, connectivity=conn))


@pytest.mark.parametrize("seed", range(6))
def test_strip_post_processor_random_multiclass_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = 47, 31
    m = ((rng.random((h, w)) < 0.6) * rng.integers(1, 3, size=(h, w))).astype(np.uint8)
    m = np.where(rng.random((h, w)) < 0.7, m, np.roll(m, 1, axis=0)).astype(np.uint8)
    heights = [int(x) for x in rng.integers(1, 12, size=5)]
    for min_px, fill, max_hole in ((4, True, None), (9, False, None), (0, True, 3)):
        expected = remove_small_objects(m, min_px)
        expected = fill_holes(expected, max_hole) if fill else expected
        proc = StripPostProcessor(h, w, min_px=min_px, fill=fill, max_hole_px=max_hole)
        got = np.concatenate([s for _, s in proc(row_strips(m, heights))])
        np.testing.assert_array_equal(got, expected)


def test_strip_post_processor_ring_around_the_image_holds_its_rows():
    # a ring whose hole spans most of the image: exact, the rows wait until the ring closes
    m = np.zeros((30, 20), np.uint8)
    m[1:29, 1:19] = 1
    m[2:28, 2:18] = 0
    m[10, 10] = 2                    # another class inside: not a one-class hole, stays
    proc = StripPostProcessor(30, 20, fill=True)
    first = proc.push(0, m[:5])
    assert [(r0, s.shape[0]) for r0, s in first] == [(0, 2)]  # rows 2.. hold the undecided hole
    rest = [x for r0 in range(5, 30, 5) for x in proc.push(r0, m[r0:r0 + 5])]
    got = np.concatenate([s for _, s in first + rest])
    np.testing.assert_array_equal(got, fill_holes(m))
    m[10, 10] = 0
    got = np.concatenate([s for _, s in StripPostProcessor(30, 20, fill=True)(row_strips(m, [5]))])
    assert got[2:28, 2:18].all() and np.array_equal(got, fill_holes(m))


def test_strip_post_processor_without_stages_passes_through_and_checks_order():
    m = _strip_mask()
    proc = StripPostProcessor(*m.shape)
    out = list(proc(row_strips(m, [10])))
    assert [r0 for r0, _ in out] == list(range(0, 61, 10))
    proc = StripPostProcessor(10, 4, min_px=3, fill=True)
    proc.push(0, np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="expected row 3, got 4"):
        proc.push(4, np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="got 3 rows, image height is 10"):
        proc.finish()
