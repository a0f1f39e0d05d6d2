"""Window geometry: grid coverage, tissue masks, the random sampler and its seeding."""

import numpy as np
import pytest

from segkit.data.windows import (
    RandomWindowSampler,
    SamplingArea,
    grid_starts,
    grid_windows,
    tissue_mask,
    worker_rng,
)
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window

# ---------------------------------------------------------------- grid


@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 64, 100, 257, 1000, 1023])
@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (32, 31), (7, 3), (100, 50), (64, 1)])
def test_grid_starts_even_steps_end_at_border(length, tile, overlap):
    starts = grid_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile
    steps = np.diff(starts)
    assert steps.min() >= 1
    assert steps.max() <= tile - overlap
    assert steps.max() - steps.min() <= 1  # as equal as possible
    # fewest tiles: one fewer could not cover with steps <= stride
    n = len(starts)
    assert (n - 2) * (tile - overlap) < length - tile


def test_grid_starts_known_values():
    assert grid_starts(10, 4, 1) == [0, 3, 6]
    assert grid_starts(100, 32, 8) == [0, 22, 45, 68]
    assert grid_starts(64, 32, 0) == [0, 32]
    assert grid_starts(65, 32, 0) == [0, 16, 33]
    assert grid_starts(5, 32, 8) == [0]


@pytest.mark.parametrize(
    "h,w,tile,overlap",
    [(37, 53, 16, 4), (16, 16, 16, 0), (5, 70, 16, 3), (101, 99, 32, 0), (33, 17, 32, 31)],
)
def test_grid_windows_cover_every_pixel(h, w, tile, overlap):
    wins = grid_windows(h, w, tile, overlap)
    cover = np.zeros((h + tile, w + tile), dtype=np.int32)
    for win in wins:
        assert (win.height, win.width) == (tile, tile)
        assert win.row >= 0 and win.col >= 0
        # windows stay inside the image unless the image is smaller than the tile
        assert win.bottom <= max(h, tile) and win.right <= max(w, tile)
        cover[win.slices] += 1
    assert (cover[:h, :w] >= 1).all()
    assert max(win.bottom for win in wins) == max(h, tile)
    assert max(win.right for win in wins) == max(w, tile)


def test_grid_windows_region_covered_and_clipped():
    region = Window(10, 20, 45, 33)
    wins = grid_windows(100, 120, 16, 5, region=region)
    cover = np.zeros((100, 120), dtype=np.int32)
    for win in wins:
        assert region.row <= win.row and win.bottom <= region.bottom
        assert region.col <= win.col and win.right <= region.right
        cover[win.slices] += 1
    assert (cover[region.slices] >= 1).all()
    assert cover.sum() == cover[region.slices].sum()
    # a region hanging past the image is clipped to the image
    wins = grid_windows(50, 50, 16, 0, region=Window(40, 40, 30, 30))
    assert wins == [Window(40, 40, 16, 16)]
    with pytest.raises(SegkitError, match="region"):
        grid_windows(50, 50, 16, 0, region=Window(60, 0, 10, 10))


@pytest.mark.parametrize("tile,overlap", [(0, 0), (16, 16), (16, -1), (16, 20)])
def test_grid_bad_tile_overlap(tile, overlap):
    with pytest.raises(SegkitError, match="tile|overlap"):
        grid_starts(100, tile, overlap)


# ---------------------------------------------------------------- tissue mask


def _slide_thumb(dtype=np.uint8):
    """White glass with a pink tissue ellipse and a speck of dust; not tile-sized."""
    h, w = 61, 83
    yy, xx = np.mgrid[:h, :w]
    tissue = ((yy - 30) / 20.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1.0
    rng = np.random.default_rng(3)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = 240 + rng.integers(-6, 7, size=(h, w, 1))  # grey glass, slight noise
    pink = np.array([200, 110, 170], dtype=np.float64)
    img[tissue] = pink + rng.integers(-15, 16, size=(int(tissue.sum()), 3))
    img[5, 75] = (120, 60, 110)  # a single dark speck: cleaned away
    if dtype == np.uint16:
        img = img * 257
    return img.astype(dtype), tissue


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("method", ["saturation", "otsu"])
def test_tissue_mask_finds_tissue(dtype, method):
    thumb, tissue = _slide_thumb(dtype)
    mask = tissue_mask(thumb, method)
    assert mask.dtype == bool and mask.shape == tissue.shape
    agree = (mask == tissue).mean()
    assert agree > 0.97, agree
    assert not mask[5, 75]  # speck removed
    assert not mask[0].any() and not mask[:, 0].any()


def test_tissue_mask_one_channel_and_dark_background():
    # fluorescence-like: dark background, bright object, 16-bit single channel
    thumb = np.full((40, 57), 300, dtype=np.uint16)
    thumb[10:30, 15:45] = 20000
    expect = np.zeros((40, 57), dtype=bool)
    expect[10:30, 15:45] = True
    for method in ("saturation", "otsu"):  # saturation falls back to otsu on 1 channel
        np.testing.assert_array_equal(tissue_mask(thumb, method), expect)
        np.testing.assert_array_equal(tissue_mask(thumb[:, :, None], method), expect)


def test_tissue_mask_none_constant_and_bad_method():
    thumb, _ = _slide_thumb()
    assert tissue_mask(thumb, "none").all()
    assert not tissue_mask(np.full((20, 30, 3), 255, np.uint8), "saturation").any()
    assert not tissue_mask(np.full((20, 30), 7, np.uint16), "otsu").any()
    with pytest.raises(SegkitError, match="otsu"):
        tissue_mask(thumb, "bogus")


# ---------------------------------------------------------------- random sampler


def _areas():
    usable = np.zeros((25, 40), dtype=bool)
    usable[5:20, 3:37] = True
    fg = np.zeros((25, 40), dtype=bool)
    fg[8:10, 10:12] = True
    return [
        SamplingArea(height=200, width=317, usable=usable, scale=8.0, foreground=fg),
        SamplingArea(height=90, width=150, region=Window(10, 20, 70, 100)),
        SamplingArea(height=40, width=30),  # smaller than the fov
    ]


def test_sampler_reproducible_and_in_bounds():
    areas = _areas()
    sampler = RandomWindowSampler(areas, fov_px=48)
    a = [sampler.sample(worker_rng(7, 2, 0, 1)) for _ in range(1)]
    rng1, rng2 = worker_rng(7, 2, 0, 1), worker_rng(7, 2, 0, 1)
    draws1 = [sampler.sample(rng1) for _ in range(500)]
    draws2 = [sampler.sample(rng2) for _ in range(500)]
    assert draws1 == draws2 and a[0] == draws1[0]
    other = [sampler.sample(worker_rng(7, 2, 0, 2)) for _ in range(1)]
    assert other != a
    seen = set()
    for k, win in draws1:
        assert isinstance(win, Window) and (win.height, win.width) == (48, 48)
        area = areas[k]
        reg = area.region or Window(0, 0, area.height, area.width)
        if reg.height >= 48:
            assert reg.row <= win.row and win.bottom <= reg.bottom
            assert reg.col <= win.col and win.right <= reg.right
        else:
            assert (win.row, win.col) == (reg.row, reg.col)
        seen.add((k, win.row, win.col))
    assert {k for k, _ in draws1} == {0, 1, 2}
    assert len(seen) > 300  # fresh offsets every draw, not a handful of grid positions
    rows0 = {w.row % 8 for k, w in draws1 if k == 0}
    assert len(rows0) == 8  # continuous positions, not aligned to the low-res grid


def test_worker_rng_distinct_streams():
    keys = [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0)]
    firsts = {worker_rng(*k).integers(1 << 62) for k in keys}
    assert len(firsts) == len(keys)
    assert worker_rng(3, 4, 5, 6).integers(1 << 62) == worker_rng(3, 4, 5, 6).integers(1 << 62)
    with pytest.raises(SegkitError):
        worker_rng(-1, 0, 0, 0)


def test_foreground_share_within_tolerance():
    h, w, scale = 300, 400, 4.0
    gh, gw = 75, 100
    fg = np.zeros((gh, gw), dtype=bool)
    fg[30:35, 60:66] = True  # 30 of 7500 cells: 0.4 % of the image
    area = SamplingArea(height=h, width=w, usable=None, scale=scale, foreground=fg)
    fg_px = np.kron(fg, np.ones((4, 4), dtype=bool))
    n = 2000
    for share in (0.0, 0.33, 0.7):
        sampler = RandomWindowSampler([area], fov_px=32, foreground_share=share, jitter=0.0)
        rng = worker_rng(11, 0, 0, 0)
        hits = 0
        for _ in range(n):
            _, win = sampler.sample(rng)
            hits += fg_px[win.row + 16, win.col + 16]
        expected = share + (1 - share) * fg.mean()
        sd = np.sqrt(expected * (1 - expected) / n)
        assert abs(hits / n - expected) <= 4 * sd + 0.005, (share, hits / n, expected)


def test_foreground_jitter_keeps_labelled_pixel_inside():
    fg = np.zeros((200, 190), dtype=bool)
    fg[83, 127] = True  # one labelled source pixel (scale 1)
    area = SamplingArea(height=200, width=190, scale=1.0, foreground=fg)
    sampler = RandomWindowSampler([area], fov_px=40, foreground_share=1.0, jitter=0.5)
    rng = worker_rng(1, 0, 0, 0)
    offsets = set()
    for _ in range(400):
        _, win = sampler.sample(rng)
        assert win.row <= 83 < win.bottom and win.col <= 127 < win.right
        offsets.add((83 - win.row, 127 - win.col))
    assert len(offsets) > 200  # jittered, not always the same window
    rows = [r for r, _ in offsets]
    assert min(rows) <= 3 and max(rows) >= 36  # the jitter reaches near both window edges


def test_image_choice_proportional_to_usable_area():
    u1 = np.zeros((10, 10), dtype=bool)
    u1[:5, :] = True  # 50 cells * 16 = 800 px
    u2 = np.ones((10, 10), dtype=bool)  # 100 cells * 16 = 1600 px
    areas = [
        SamplingArea(40, 40, usable=u1, scale=4.0),
        SamplingArea(40, 40, usable=u2, scale=4.0),
        SamplingArea(40, 40, usable=np.zeros((10, 10), bool), scale=4.0),  # dropped
        SamplingArea(60, 40, region=Window(0, 0, 40, 40)),  # region area 1600 px
    ]
    sampler = RandomWindowSampler(areas, fov_px=16)
    assert sampler.dropped == [2]
    np.testing.assert_allclose(sampler.probabilities, [0.2, 0.4, 0.4])
    rng = worker_rng(5, 0, 0, 0)
    n = 3000
    counts = np.bincount([sampler.sample(rng)[0] for _ in range(n)], minlength=4)
    assert counts[2] == 0
    for k, p in ((0, 0.2), (1, 0.4), (3, 0.4)):
        assert abs(counts[k] / n - p) <= 4 * np.sqrt(p * (1 - p) / n), counts


def test_uniform_draws_stay_on_usable_area():
    usable = np.zeros((20, 30), dtype=bool)
    usable[2:6, 20:28] = True
    area = SamplingArea(height=100, width=150, usable=usable, scale=5.0)
    sampler = RandomWindowSampler([area], fov_px=10, foreground_share=0.5)  # no fg: all uniform
    rng = worker_rng(0, 0, 0, 0)
    for _ in range(500):
        _, win = sampler.sample(rng)
        r, c = win.row + 5, win.col + 5
        assert usable[min(r // 5, 19), min(c // 5, 29)] or usable[(r - 1) // 5, (c - 1) // 5]


def test_sampler_bad_input():
    empty = SamplingArea(30, 30, usable=np.zeros((3, 3), bool), scale=10.0)
    with pytest.raises(SegkitError, match="usable area"):
        RandomWindowSampler([empty], fov_px=8)
    with pytest.raises(SegkitError, match="usable area"):
        RandomWindowSampler([], fov_px=8)
    with pytest.raises(SegkitError, match=r"\(slide7.tif\) has any usable area"):
        RandomWindowSampler([empty], fov_px=8, names=["slide7.tif"])
    with pytest.raises(SegkitError, match="foreground_share"):
        RandomWindowSampler([SamplingArea(30, 30)], fov_px=8, foreground_share=1.5)
    with pytest.raises(SegkitError, match="fov_px"):
        RandomWindowSampler([SamplingArea(30, 30)], fov_px=0)
    with pytest.raises(SegkitError, match="region"):
        RandomWindowSampler([SamplingArea(30, 30, region=Window(40, 40, 5, 5))], fov_px=8)


def test_tissue_mask_float_thumbnail_with_nan_nodata():
    thumb = np.full((30, 41, 3), np.nan, dtype=np.float32)  # nodata outside the valid area
    thumb[4:26, 6:35] = np.linspace(0.6, 0.9, 29, dtype=np.float32)[None, :, None]
    expect = np.zeros((30, 41), dtype=bool)
    expect[4:26, 6:35] = True
    np.testing.assert_array_equal(tissue_mask(thumb, "otsu"), expect)
