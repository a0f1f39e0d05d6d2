"""The streaming predictor's edges: a gating predictor, argument boundaries, the overlap clamp, which
tiles hold tissue, which tiles run (margin, overlap, region), dict outputs, non-square resizing."""

import warnings

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.predict import predict_probs
from test_predict import ArrayRaster, Identity, image, to_unit



def test_gated_tiles_blend_with_weight_zero_through_a_real_tiff(tmp_path):
    """A predictor returning (probs, kept): a tile not kept adds nothing, so where a kept tile
    overlaps it the output is the kept tile's value alone, and where none covers it is 0."""
    import tifffile

    from segkit.io.images.raster import open_raster

    path = tmp_path / "gate.tif"
    tifffile.imwrite(path, np.full((16, 24), 7, np.uint8))
    seen = []

    def gate(x):  # tile k (left to right) predicts 0.1 * (k + 1); only the middle tile is kept
        n = x.shape[0]
        values = torch.arange(len(seen), len(seen) + n, dtype=torch.float32) * 0.1 + 0.1
        seen.extend(range(n))
        kept = torch.tensor([len(seen) - n + i == 1 for i in range(n)])
        return values.view(n, 1, 1, 1).expand(n, 1, *x.shape[2:]).clone(), kept

    with open_raster(path) as raster:
        probs = predict_probs(gate, raster, fov_px=16, size=16, overlap_px=4, preprocess=to_unit,
                              blend="flat", batch_size=8)
    assert len(seen) == 2  # columns 0-15 and 8-23: a 16 px tile, 4 px overlap, even steps
    np.testing.assert_allclose(probs[0, :, 8:], 0.2, rtol=1e-6)  # the kept tile alone
    assert (probs[0, :, :8] == 0).all()                          # only the gated tile covered these


def test_argument_boundaries_and_the_default_overlap():
    from segkit.infer.predict import default_overlap_px

    assert [default_overlap_px(n) for n in (-4, 0, 3, 4, 255, 256, 257, 1000)] == [0, 0, 0, 1, 63, 64, 64, 64]
    raster = ArrayRaster(image(9, 11))
    kw = dict(fov_px=4, overlap_px=None, preprocess=to_unit, activation="identity")
    # the smallest valid values run: size 1 (tiles resampled 4 -> 1), batch 1, margin 0, a 2 px centre
    one = predict_probs([(Identity(), 1.0)], raster, size=1, batch_size=1, **kw)
    assert one.shape == (1, 9, 11)
    centre = predict_probs([(Identity(), 1.0)], raster, size=4, batch_size=1, margin_px=1, **kw)
    np.testing.assert_allclose(centre[0], raster.image[:, :, 0] / 255.0, atol=1e-6)
    for bad, message in [(dict(size=0, batch_size=1), r"size \(0\) and batch_size \(1\) must be positive"),
                         (dict(size=4, batch_size=0), r"size \(4\) and batch_size \(0\) must be positive"),
                         (dict(size=4, batch_size=1, margin_px=-1), r"margin_px -1: must be >= 0"),
                         (dict(size=4, batch_size=1, margin_px=2), r"fov_px 4 - 2 x margin > 0")]:
        with pytest.raises(SegkitError, match=message):
            predict_probs([(Identity(), 1.0)], raster, **kw, **bad)


def test_an_overlap_over_half_the_tile_is_clamped_with_one_warning():
    raster = ArrayRaster(image(20, 20))
    kw = dict(fov_px=8, size=8, preprocess=to_unit, activation="identity", blend="flat")
    with pytest.warns(UserWarning, match=r"infer.overlap_px: 5 px is more than half the 8 px tile; tiles overlap by 4 px"):
        clamped = predict_probs([(Identity(), 1.0)], raster, overlap_px=5, **kw)
    half = predict_probs([(Identity(), 1.0)], raster, overlap_px=4, **kw)
    np.testing.assert_array_equal(clamped, half)


def test_which_tiles_hold_tissue_at_a_fractional_scale():
    """A tile runs when any tissue cell under it is True, its cell range rounded outwards; one
    cell lies under even a tile smaller than a cell."""
    from segkit.infer.predict import _has_tissue

    tissue = np.zeros((4, 4), bool)
    tissue[0, 0] = True                                   # cell (0, 0): source rows/cols 0..2.5
    assert _has_tissue(Window(0, 0, 2, 2), tissue, 2.5)
    assert _has_tissue(Window(2, 2, 1, 1), tissue, 2.5)     # rows 2..3 touch cell 0
    assert not _has_tissue(Window(3, 3, 4, 4), tissue, 2.5)  # starts in cell 1
    tissue[:] = False
    tissue[3, 3] = True                                   # the last cell: source 7.5..10
    assert _has_tissue(Window(5, 5, 3, 3), tissue, 2.5)     # ends at 8 > 7.5: rounded outwards
    assert not _has_tissue(Window(5, 5, 2, 2), tissue, 2.5)  # ends at 7.0, inside cell 2
    assert _has_tissue(Window(8, 8, 1, 1), tissue, 2.5)
    assert not _has_tissue(Window(0, 8, 7, 2), tissue, 2.5) and not _has_tissue(Window(8, 0, 2, 7), tissue, 2.5)


class DictOutput(nn.Module):
    """A torchvision-style model: {"out": logits, "aux": ...}."""

    def forward(self, x):
        return {"aux": torch.zeros(1), "out": torch.logit(x, eps=1e-6)}


def test_a_dict_output_model_and_a_gate_with_no_tissue():
    img = image(20, 24)
    raster = ArrayRaster(img)
    kw = dict(fov_px=16, size=16, overlap_px=4, preprocess=to_unit)
    np.testing.assert_allclose(predict_probs([(DictOutput(), 1.0)], raster, **kw)[0], img[:, :, 0] / 255.0, atol=1e-5)
    for spelling in ("none", "identity", None):   # no activation, however it is spelled
        np.testing.assert_allclose(predict_probs([(Identity(), 1.0)], raster, activation=spelling, **kw)[0],
                                   img[:, :, 0] / 255.0, atol=1e-6)

    def gate(x):  # two channels and a kept flag per tile
        return torch.ones(x.shape[0], 2, *x.shape[2:]), torch.ones(x.shape[0], dtype=torch.bool)

    blank = predict_probs(gate, raster, tissue=(np.zeros((2, 2), bool), 16.0), **kw)
    assert blank.shape == (2, 20, 24) and blank.max() == 0      # the channels come from the blank forward
    flat = predict_probs(gate, raster, tissue=(np.zeros((2, 2), bool), 16.0), fov_px=16, size=16, overlap_px=4,
                         preprocess=lambda raw: raw[:, :, 0].astype(np.float32))   # (h, w) tiles
    assert flat.shape == (2, 20, 24) and flat.max() == 0


def test_the_tiles_run_are_the_grid_of_the_kept_centres():
    """How many tiles the model sees: the grid of (fov_px - 2 x margin) centres with the overlap
    (clamped to half a centre), over the region only; and what each tile reads."""
    from segkit.data.windows import grid_windows
    from segkit.infer.predict import resize_probs

    img = image(61, 77)
    seen = []

    def counting(x):
        seen.append(x.shape[0])
        return x[:, :1] * 1.0

    def tiles(**kw):
        seen.clear()
        probs = predict_probs(counting, ArrayRaster(img), preprocess=to_unit, batch_size=4, **kw)
        return sum(seen), probs

    n, probs = tiles(fov_px=16, size=16, overlap_px=None, margin_px=2)
    assert n == len(grid_windows(61, 77, 12, 3))                        # 12 px centres, default overlap 12 // 4
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # half a tile is allowed, silently
        n, _ = tiles(fov_px=8, size=8, overlap_px=4)
    assert n == len(grid_windows(61, 77, 8, 4))
    with pytest.warns(UserWarning, match="tiles overlap by 4 px"):
        assert tiles(fov_px=8, size=8, overlap_px=7)[0] == n             # clamped to 4, not to less
    region = Window(10, 20, 17, 30)
    n, probs = tiles(fov_px=8, size=8, overlap_px=2, region=region)
    assert n == len(grid_windows(61, 77, 8, 2, region=region)) < len(grid_windows(61, 77, 8, 2))
    np.testing.assert_allclose(probs[0], img[10:27, 20:50, 0] / 255.0, atol=1e-6)
    # a preprocess giving (h, w) tiles is read as one channel; a wrong tile size names the raster
    one = predict_probs(counting, ArrayRaster(img), fov_px=16, size=16, overlap_px=4,
                        preprocess=lambda raw: raw[:, :, 0].astype(np.float32) / 255.0)
    np.testing.assert_allclose(one[0], img[:, :, 0] / 255.0, atol=1e-6)
    with pytest.raises(SegkitError, match=r"mem.tif: tile \(0, 0, 16, 16\) read as \(15, 16, 1\), "
                                          r"expected \(16, 16, C\)"):
        predict_probs(counting, ArrayRaster(img), fov_px=16, size=16, overlap_px=4, preprocess=lambda raw: to_unit(raw)[1:])
    # probabilities resized to a non-square shape: OpenCV's bilinear sampling, per channel
    small = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    wide = resize_probs(small, (5, 9))
    expected = np.stack([cv2.resize(small[0, c].numpy(), (9, 5), interpolation=cv2.INTER_LINEAR) for c in range(2)])
    assert tuple(wide.shape) == (1, 2, 5, 9)
    np.testing.assert_allclose(wide[0].numpy(), expected, rtol=1e-6, atol=1e-6)
