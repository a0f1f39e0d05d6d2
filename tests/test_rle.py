import numpy as np
import pytest

from segkit.ground.errors import SegkitError
from segkit.io.rle import RleStripEncoder, decode, encode


def border_mask(h=37, w=23, seed=0):
    """Non-square mask with objects on every border and runs crossing columns/rows in flat order."""
    rng = np.random.default_rng(seed)
    m = (rng.random((h, w)) > 0.6).astype(np.uint8)
    m[0, :5] = 1  # top
    m[-1, -6:] = 1  # bottom, runs into the next column's top in column-major order
    m[:4, 0] = 1  # left
    m[-7:, -1] = 1  # right
    m[10:20, 5:15] = 1  # a block
    return m


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("shape", [(37, 23), (5, 61), (3, 17), (17, 3)])
def test_roundtrip(order, shape):
    m = border_mask(*shape)
    assert m.any() and not m.all()
    out = decode(encode(m, order), m.shape, order)
    assert out.dtype == np.uint8 and out.shape == m.shape
    np.testing.assert_array_equal(out, m)


def test_full_and_empty():
    full = np.ones((4, 3), np.uint8)
    assert encode(full) == "1 12" and encode(full, "C") == "1 12"
    assert encode(np.zeros((4, 3), bool)) == ""
    np.testing.assert_array_equal(decode("", (4, 3)), np.zeros((4, 3)))
    np.testing.assert_array_equal(decode(None, (2, 2)), np.zeros((2, 2)))
    np.testing.assert_array_equal(decode(float("nan"), (2, 2)), np.zeros((2, 2)))


def test_known_examples():
    m = np.array([[1, 0, 1],
                  [1, 0, 0]], dtype=np.uint8)
    # column-major pixel numbers: (0,0)=1 (1,0)=2 (0,1)=3 (1,1)=4 (0,2)=5 (1,2)=6
    assert encode(m) == "1 2 5 1"
    # row-major: (0,0)=1 (0,1)=2 (0,2)=3 (1,0)=4 ...
    assert encode(m, "C") == "1 1 3 2"
    np.testing.assert_array_equal(decode("1 2 5 1", (2, 3)), m)
    np.testing.assert_array_equal(decode("1 1 3 2", (2, 3), order="C"), m)
    # a run crossing from the bottom of column 0 into the top of column 1
    m2 = np.array([[0, 1], [1, 0]], np.uint8)
    assert encode(m2) == "2 2"
    assert encode(m2, "C") == "2 2"


def test_decode_overlapping_and_unsorted_runs():
    out = decode("5 2 1 3 2 2", (2, 3))  # pixels 1-3, 2-3, 5-6
    np.testing.assert_array_equal(out, np.array([[1, 1, 1], [1, 0, 1]]))


@pytest.mark.parametrize("rle,msg", [
    ("1 2 3", "odd number"),
    ("1 2 5 3", "past the 2x3 image"),
    ("1 2.5", "'2.5' is not an integer"),
    ("a 2", "'a' is not an integer"),
    ("0 2", "1-indexed"),
    ("1 -2", "negative"),
])
def test_bad_rle(rle, msg):
    with pytest.raises(SegkitError, match=msg):
        decode(rle, (2, 3))


def test_bad_order():
    with pytest.raises(SegkitError, match="order"):
        encode(np.zeros((2, 2)), order="K")


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("strip_h", [1, 2, 5, 7, 37, 50])
def test_strip_encoder_equals_full(order, strip_h):
    m = border_mask(37, 23)
    enc = RleStripEncoder(37, 23, order)
    for r in range(0, 37, strip_h):
        enc.add(m[r:r + strip_h].astype(bool))
    assert enc.finish() == encode(m, order)


@pytest.mark.parametrize("order", ["F", "C"])
def test_strip_encoder_uneven_strips_and_edge_masks(order):
    for m in (np.ones((9, 4), np.uint8), np.zeros((9, 4), np.uint8), border_mask(9, 4, seed=3)):
        enc = RleStripEncoder(9, 4, order)
        for a, b in [(0, 2), (2, 3), (3, 3), (3, 8), (8, 9)]:
            enc.add(m[a:b])
        assert enc.finish() == encode(m, order)


def test_strip_encoder_checks_rows():
    enc = RleStripEncoder(4, 3)
    enc.add(np.zeros((3, 3)))
    with pytest.raises(SegkitError, match="3 rows"):
        enc.finish()
    with pytest.raises(SegkitError, match="height"):
        enc.add(np.zeros((2, 3)))
    with pytest.raises(SegkitError, match="shape"):
        enc.add(np.zeros((1, 4)))


@pytest.mark.parametrize("order", ["F", "C"])
def test_strip_encoder_refuses_a_strip_after_finish(order):
    enc = RleStripEncoder(2, 3, order)
    enc.add(np.ones((2, 3), bool))
    assert enc.finish() == "1 6"
    with pytest.raises(RuntimeError, match=r"add\(\) after finish\(\)"):
        enc.add(np.zeros((0, 3), bool))  # an empty strip would otherwise pass every other check
