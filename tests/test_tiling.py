import numpy as np
import pytest

from segkit.data.windows import grid_windows
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.tiling import StripAccumulator, blend_weights


@pytest.mark.parametrize("mode", ["gaussian", "pyramid", "flat"])
@pytest.mark.parametrize("shape", [(16, 16), (7, 12), (1, 5), (512, 512)])
def test_blend_weights_positive_and_symmetric(mode, shape):
    w = blend_weights(*shape, mode=mode)
    assert w.dtype == np.float32 and w.shape == shape
    assert (w > 0).all() and np.isfinite(w).all()
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    if shape[0] == shape[1]:
        np.testing.assert_array_equal(w, w.T)


def test_blend_weights_shapes_of_modes():
    g = blend_weights(9, 9, "gaussian")
    assert g[4, 4] == 1.0 and g[0, 0] < g[0, 4] < g[4, 4]
    p = blend_weights(5, 7, "pyramid")
    np.testing.assert_array_equal(p[:, 0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(p[2], [1, 2, 3, 3, 3, 2, 1])
    assert (blend_weights(3, 4, "flat") == 1).all()
    # sigma = size / 8 is tiny at the corners of a big tile: the floor keeps them > 0
    assert blend_weights(1024, 1024)[0, 0] > 0
    with pytest.raises(SegkitError, match="pyramid"):
        blend_weights(4, 4, "cosine")


@pytest.mark.parametrize("mode", ["gaussian", "pyramid", "flat"])
def test_accumulator_reproduces_a_field_and_streams(mode):
    h, w, fov, overlap = 61, 77, 16, 5
    field = np.random.default_rng(0).random((2, h, w)).astype(np.float32)
    weights = blend_weights(fov, fov, mode)
    acc = StripAccumulator(2, h, w)
    strips, held = [], 0
    for win in grid_windows(h, w, fov, overlap):
        tile = np.zeros((2, fov, fov), np.float32)
        tile[:, : min(fov, h - win.row), : min(fov, w - win.col)] = field[:, win.row:win.bottom, win.col:win.right]
        strips += acc.add(win, tile, weights)
        held = max(held, acc.rows_held)
    strips += acc.finish()
    rows = [r for r, _ in strips]
    assert rows[0] == 0 and all(s.shape[1] > 0 for _, s in strips)
    assert all(r1 == r0 + s.shape[1] for (r0, s), r1 in zip(strips, rows[1:]))
    out = np.concatenate([s for _, s in strips], axis=1)
    np.testing.assert_allclose(out, field, atol=1e-6)
    assert len(strips) > 3 and held <= fov  # only one tile row in flight, not the image


def test_accumulator_crops_tiles_past_the_border_and_rejects_disorder():
    acc = StripAccumulator(1, 5, 6)
    acc.add(Window(-2, 3, 8, 8), np.full((1, 8, 8), 0.5, np.float32), np.ones((8, 8), np.float32))
    acc.add(Window(-2, -5, 8, 8), np.full((1, 8, 8), 0.25, np.float32), np.ones((8, 8), np.float32))
    (row0, strip), = acc.finish()
    assert row0 == 0 and strip.shape == (1, 5, 6)
    np.testing.assert_allclose(strip[0, :, :3], 0.25)
    np.testing.assert_allclose(strip[0, :, 3:], 0.5)
    acc = StripAccumulator(1, 10, 4)
    acc.add(Window(4, 0, 4, 4), np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="row-major"):
        acc.add(Window(0, 0, 4, 4), np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.float32))


def test_uncovered_rows_are_zero():
    acc = StripAccumulator(1, 6, 3)
    strips = acc.add(Window(2, 0, 2, 3), np.ones((1, 2, 3), np.float32), np.ones((2, 3), np.float32))
    assert [(r, s.shape) for r, s in strips] == [(0, (1, 2, 3))]
    strips += acc.finish()
    out = np.concatenate([s for _, s in strips], axis=1)[0]
    np.testing.assert_array_equal(out.sum(axis=1), [0, 0, 3, 3, 0, 0])


def test_accumulator_matches_dense_blending_for_ragged_tiles():
    rng = np.random.default_rng(5)
    h, w = 23, 19
    acc = StripAccumulator(2, h, w)
    dense_s, dense_w = np.zeros((2, h, w)), np.zeros((h, w))
    strips = []
    row = -3
    while row < h:
        th = int(rng.integers(2, 9))
        for col in sorted(rng.integers(-4, w, 3)):
            tw = int(rng.integers(2, 9))
            win = Window(row, int(col), th, tw)
            probs = rng.random((2, th, tw)).astype(np.float32)
            weights = rng.random((th, tw)).astype(np.float32) + 0.1
            strips += acc.add(win, probs, weights)
            r0, r1, c0, c1 = max(row, 0), min(row + th, h), max(col, 0), min(col + tw, w)
            if r1 > r0 and c1 > c0:
                sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
                dense_s[:, r0:r1, c0:c1] += probs[(slice(None),) + sl] * weights[sl]
                dense_w[r0:r1, c0:c1] += weights[sl]
        row += int(rng.integers(1, 6))
    strips += acc.finish()
    out = np.concatenate([s for _, s in strips], axis=1)
    expected = np.divide(dense_s, dense_w, out=np.zeros_like(dense_s), where=dense_w > 0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert [r for r, _ in strips] == sorted({r for r, _ in strips}) and strips[0][0] == 0


def test_wide_strips_are_split_and_iterators_match_lists():
    h, w, fov, overlap = 40, 50, 16, 4
    field = np.random.default_rng(7).random((1, h, w)).astype(np.float32)
    weights = blend_weights(fov, fov, "gaussian")
    tiles = []
    for win in grid_windows(h, w, fov, overlap):
        tile = np.zeros((1, fov, fov), np.float32)
        tile[:, : min(fov, h - win.row), : min(fov, w - win.col)] = field[:, win.row:win.bottom, win.col:win.right]
        tiles.append((win, tile, weights))
    small = StripAccumulator(1, h, w, max_strip_values=3 * w + 7)  # 3 rows per strip
    assert small.max_rows == 3
    strips = [s for t in tiles for s in small.add_iter(*t)] + list(small.finish_iter())
    assert max(s.shape[1] for _, s in strips) == 3
    assert strips[0][0] == 0 and all(r1 == r0 + s.shape[1] for (r0, s), (r1, _) in zip(strips, strips[1:]))
    np.testing.assert_allclose(np.concatenate([s for _, s in strips], axis=1), field, atol=1e-6)
    big = StripAccumulator(1, h, w)
    listed = []
    for t in tiles:
        listed += big.add(*t)
    listed += big.finish()
    assert len(listed) < len(strips)
    np.testing.assert_array_equal(np.concatenate([s for _, s in listed], axis=1),
                                  np.concatenate([s for _, s in strips], axis=1))


def test_blend_weight_values_are_exact():
    """The documented weights to the last digit: a changed sigma, floor or edge offset changes how
    overlapping tiles mix, which a reproduced field cannot show (any positive weights reproduce it)."""
    g = blend_weights(9, 5, "gaussian")
    x_r, x_c = np.arange(9) - 4.0, np.arange(5) - 2.0
    expected = np.outer(np.exp(-0.5 * (x_r / (9 / 8)) ** 2), np.exp(-0.5 * (x_c / (5 / 8)) ** 2))
    np.testing.assert_allclose(g, np.maximum(expected, 1e-4).astype(np.float32), rtol=1e-6)
    assert g.min() == np.float32(1e-4)  # the corners sit on the floor
    even = blend_weights(4, 4, "gaussian")  # the peak between two centre pixels, scaled to 1
    assert even[1, 1] == even[2, 2] == 1.0 and even[0, 1] == pytest.approx(np.exp(-0.5 * (3 ** 2 - 1 ** 2)), rel=1e-6)  # x = 1.5 vs 0.5, sigma 0.5
    np.testing.assert_array_equal(blend_weights(1, 1, "gaussian"), [[1.0]])
    np.testing.assert_array_equal(blend_weights(4, 6, "pyramid"), [[1, 1, 1, 1, 1, 1], [1, 2, 2, 2, 2, 1],
                                                                  [1, 2, 2, 2, 2, 1], [1, 1, 1, 1, 1, 1]])
    for bad in [(0, 4), (4, 0), (-1, 4)]:
        with pytest.raises(SegkitError, match=rf"tile size must be positive, got {bad[0]}x{bad[1]}"):
            blend_weights(*bad)
    with pytest.raises(SegkitError, match="unknown mode 'cosine'; valid: gaussian, pyramid, flat"):
        blend_weights(4, 4, "cosine")


def test_blending_two_overlapping_tiles_uses_their_weights():
    """Two tiles over one row: where both cover, the value is their weighted mean, exactly."""
    acc = StripAccumulator(1, 1, 5)
    acc.add(Window(0, 0, 1, 3), np.full((1, 1, 3), 0.2, np.float32), np.array([[1, 1, 3]], np.float32))
    acc.add(Window(0, 2, 1, 3), np.full((1, 1, 3), 0.6, np.float32), np.array([[1, 1, 1]], np.float32))
    (row0, strip), = acc.finish()
    np.testing.assert_allclose(strip[0, 0], [0.2, 0.2, (3 * 0.2 + 0.6) / 4, 0.6, 0.6], rtol=1e-6)
    assert acc.finish() == [] and acc.rows_held == 0 and acc.top == 1


def test_a_tile_whose_shapes_disagree_is_refused_by_name():
    acc = StripAccumulator(1, 4, 4)
    with pytest.raises(ValueError, match=r"^tile \(0, 0, 3, 3\): probs \(1, 2, 2\) / weights \(2, 2\) do not match$"):
        acc.add(Window(0, 0, 3, 3), np.ones((1, 2, 2), np.float32), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"^tile \(0, 0, 2, 2\): probs \(1, 2, 2\) / weights \(2, 3\) do not match$"):
        acc.add(Window(0, 0, 2, 2), np.ones((1, 2, 2), np.float32), np.ones((2, 3), np.float32))
