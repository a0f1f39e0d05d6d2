"""Dense CRF: sharpens a blurred prediction; tiles and strips; missing extra -> install hint."""

import sys

import cv2
import numpy as np
import pytest

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.post.crf import (
    CRF_INSTALL_HINT,
    CrfStripProcessor,
    RowContextStream,
    dense_crf,
    tiled_crf,
)

try:  # the crf extra is optional; only the install-hint test runs without it
    import pydensecrf.densecrf  # noqa: F401
    HAVE_CRF = True
except ImportError:
    HAVE_CRF = False
needs_crf = pytest.mark.skipif(not HAVE_CRF, reason="pydensecrf (segkit[crf]) not installed")


def _scene(h=48, w=64, shift=3, seed=0):
    """Two regions with a wavy boundary; the 'prediction' is the truth blurred and shifted."""
    yy, xx = np.mgrid[:h, :w]
    truth = (xx > 30 + 6 * np.sin(yy / 5.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image = np.where(truth[..., None] == 1, 190.0, 60.0) + rng.normal(0, 8, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 5)
    blurred = np.pad(blurred, ((0, 0), (shift, 0)), mode="edge")[:, :w]  # boundary moved right
    probs = (0.1 + 0.8 * blurred)[None].astype(np.float32)
    return image, probs, truth


def _errors(probs, truth):
    return int(((probs[0] >= 0.5) != truth).sum())


@needs_crf
def test_crf_sharpens_blurred_binary_prediction():
    image, probs, truth = _scene()
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    assert _errors(probs, truth) > 100
    assert _errors(refined, truth) < _errors(probs, truth) / 10
    assert np.abs(refined[0] - truth).mean() < np.abs(probs[0] - truth).mean() / 5


@needs_crf
def test_crf_multiclass_and_grayscale_image():
    image, probs, truth = _scene()
    three = np.stack([0.5 * (1 - probs[0]), probs[0], 0.5 * (1 - probs[0])])  # classes 0 and 2 share the left
    refined = dense_crf(image[..., 0], three, iterations=3)
    assert refined.shape == (3, *truth.shape)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    before = (np.argmax(three, 0) == 1) != truth
    after = (np.argmax(refined, 0) == 1) != truth
    assert after.sum() < before.sum() / 5
    # float image in [0, 1] and uint16 are scaled, same result as uint8
    np.testing.assert_allclose(dense_crf(image / 255.0, probs), dense_crf(image, probs), atol=1e-5)
    np.testing.assert_allclose(dense_crf(image.astype(np.uint16) * 257, probs), dense_crf(image, probs), atol=1e-5)


@needs_crf
def test_tiled_crf_one_tile_equals_dense_and_small_tiles_still_sharpen():
    image, probs, truth = _scene()
    np.testing.assert_array_equal(tiled_crf(image, probs, tile=64, overlap=8), dense_crf(image, probs))
    tiled = tiled_crf(image, probs, tile=20, overlap=8)  # 3 x 4 cores, not dividing the image
    assert tiled.shape == probs.shape and np.isfinite(tiled).all()
    assert _errors(tiled, truth) < _errors(probs, truth) / 10
    half = tiled_crf(image, probs, tile=32, overlap=8, downscale=2)  # solved at 1/2 resolution
    assert half.shape == probs.shape and _errors(half, truth) < _errors(probs, truth) / 5
    rows = tiled_crf(image, probs, tile=20, overlap=8, rows=(20, 40))  # same cores as rows 20..40 above
    np.testing.assert_array_equal(rows, tiled[:, 20:40])


@needs_crf
def test_crf_strip_processor_matches_tiled_crf_with_row_context():
    image, probs, truth = _scene(h=50, w=64)
    reads = []

    def read_image(window: Window):
        reads.append(window)
        return image[window.slices]

    proc = CrfStripProcessor(50, 64, read_image, tile=20, overlap=8)
    strips = [(r, probs[:, r:r + 13]) for r in range(0, 50, 13)]
    out = list(proc(strips))
    assert [r for r, _ in out] == sorted(r for r, _ in out) and out[0][0] == 0
    streamed = np.concatenate([p for _, p in out], axis=1)
    assert streamed.shape == probs.shape
    assert reads == [Window(r, 0, min(13, 50 - r), 64) for r in range(0, 50, 13)]
    assert _errors(streamed, truth) < _errors(probs, truth) / 10
    # every row had >= 8 rows of context (or the image border): close to the in-memory tiling
    assert np.abs(streamed - tiled_crf(image, probs, tile=20, overlap=8)).mean() < 0.01


def test_missing_pydensecrf_gives_install_hint(monkeypatch):
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    image, probs, _ = _scene(h=8, w=8)
    with pytest.raises(SegkitError, match=r"pip install 'segkit\[crf\]' \(pydensecrf2\)") as err:
        dense_crf(image, probs)
    assert str(err.value) == CRF_INSTALL_HINT
    with pytest.raises(SegkitError, match="crf extra"):
        CrfStripProcessor(8, 8, lambda w: image)


@needs_crf
def test_crf_rejects_mismatched_shapes():
    image, probs, _ = _scene(h=8, w=8)
    with pytest.raises(ValueError, match="do not match image"):
        dense_crf(image[:7], probs)


def test_row_context_stream_gives_margin_rows_of_context():
    data = np.arange(10 * 3).reshape(10, 3)
    seen = []

    def process(ctx, open_top, open_bottom, a, b):
        seen.append((ctx[0].shape[-2], open_top, open_bottom, a, b))
        return [c[..., a:b, :] for c in ctx]

    stream = RowContextStream(10, 2, process)
    out = list(stream((r, data[r:r + 3]) for r in range(0, 10, 3)))
    np.testing.assert_array_equal(np.concatenate([s for _, s in out]), data)
    assert [r for r, _ in out] == [0, 1, 4, 7]
    for n, open_top, open_bottom, a, b in seen:
        assert a == (2 if open_top else a) and (n - b == 2 if open_bottom else n == b)
    stream = RowContextStream(10, 2, process)
    stream.push(0, data[:3])
    with pytest.raises(ValueError, match="expected row 3, got 4"):
        stream.push(4, data[4:7])
    with pytest.raises(ValueError, match="got 3 rows, image height is 10"):
        stream.finish()
