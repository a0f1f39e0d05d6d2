"""open_raster: every backend and layout gives the same pixels, padding, pyramid levels, errors."""

import os
import pickle

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.transform import from_origin

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io.images import raster as raster_mod
from segkit.io.images.raster import open_raster

H, W = 301, 457  # not multiples of the 64 px tiles / 17 row strips
WINDOWS = [
    Window(0, 0, H, W),
    Window(10, 20, 100, 130),
    Window(250, 400, 100, 100),   # past bottom-right
    Window(-30, -40, 90, 120),    # past top-left
    Window(-10, 200, H + 20, 50),  # taller than the image
    Window(500, 600, 20, 30),     # wholly outside
    Window(63, 63, 2, 2),         # straddles four tiles
]


def _image(channels=3, dtype=np.uint8):
    yy, xx = np.mgrid[0:H, 0:W]
    planes = [(yy * 7 + xx * 3 + 11 * k) % 251 + (yy * xx % 5) for k in range(channels)]
    img = np.stack(planes, axis=-1).astype(np.float64)
    if dtype == np.uint16:
        img = img * 257
    elif dtype == np.float32:
        img = img / 7.0 - 3.0
    return img.astype(dtype)


def _expected(img, window, mode="constant", value=0):
    r0, c0, h, w = window
    if mode == "reflect":
        rows = np.arange(r0, r0 + h)
        cols = np.arange(c0, c0 + w)
        period_r, period_c = 2 * (H - 1), 2 * (W - 1)
        rows, cols = np.mod(rows, period_r), np.mod(cols, period_c)
        rows = np.where(rows >= H, period_r - rows, rows)
        cols = np.where(cols >= W, period_c - cols, cols)
        return img[np.ix_(rows, cols)]
    out = np.full((h, w, img.shape[2]), value, img.dtype)
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r0 + h, H), max(c0, 0), min(c0 + w, W)
    if ir0 < ir1 and ic0 < ic1:
        out[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = img[ir0:ir1, ic0:ic1]
    return out


def _write_geotiff(path, img, **extra):
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=img.shape[2], dtype=img.dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5), tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate", **extra) as ds:
        ds.write(img.transpose(2, 0, 1))


WRITERS = {
    "tiled_zlib": lambda p, img: tifffile.imwrite(p, img, tile=(64, 64), compression="zlib"),
    "tiled_zstd": lambda p, img: tifffile.imwrite(p, img, tile=(64, 64), compression="zstd"),
    "tiled_lzw_predictor": lambda p, img: tifffile.imwrite(p, img, tile=(64, 64), compression="lzw",
                                                           predictor=True),
    "striped": lambda p, img: tifffile.imwrite(p, img, rowsperstrip=17),
    "striped_deflate": lambda p, img: tifffile.imwrite(p, img, rowsperstrip=17, compression="zlib"),
    "bigtiff": lambda p, img: tifffile.imwrite(p, img, tile=(64, 64), compression="zlib", bigtiff=True),
    "planar": lambda p, img: tifffile.imwrite(p, np.ascontiguousarray(img.transpose(2, 0, 1)), tile=(64, 64),
                                              planarconfig="separate", photometric="minisblack",
                                              compression="zlib"),
    "ome_pages": lambda p, img: tifffile.imwrite(p, np.ascontiguousarray(img.transpose(2, 0, 1)), ome=True,
                                                 tile=(64, 64), metadata={"axes": "CYX"}),
    "geotiff": _write_geotiff,
}


def test_jpeg_tiles_match_tifffile(tmp_path):
    img = _smooth(H, W)  # lossy: compare with tifffile's own decoding of the whole image
    tifffile.imwrite(tmp_path / "j.tif", img, tile=(64, 64), compression="jpeg", photometric="rgb")
    whole = tifffile.imread(tmp_path / "j.tif")
    raster = open_raster(tmp_path / "j.tif")
    for window in WINDOWS:
        np.testing.assert_array_equal(raster.read(window), _expected(whole, window))


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_tiff_layouts_agree_pixel_for_pixel(tmp_path, kind):
    img = _image()
    path = tmp_path / f"{kind}.tif"
    WRITERS[kind](path, img)
    raster = open_raster(path)
    assert (raster.height, raster.width, raster.channels, raster.dtype) == (H, W, 3, np.uint8)
    assert raster.backend == ("rasterio" if kind == "geotiff" else "tifffile")
    for window in WINDOWS:
        np.testing.assert_array_equal(raster.read(window), _expected(img, window), err_msg=str(window))


def test_png_and_jpeg_are_rgb(tmp_path):
    img = _image()
    cv2.imwrite(str(tmp_path / "a.png"), img[..., ::-1])
    raster = open_raster(tmp_path / "a.png")
    assert raster.backend == "opencv" and raster.crs is None and raster.transform is None
    for window in WINDOWS:
        np.testing.assert_array_equal(raster.read(window), _expected(img, window))
    flat = np.zeros((40, 50, 3), np.uint8)
    flat[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "b.jpg"), flat[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    jpg = open_raster(tmp_path / "b.jpg").read(Window(0, 0, 40, 50))
    assert abs(int(jpg[..., 0].mean()) - 200) <= 2 and jpg[..., 2].max() <= 3


@pytest.mark.parametrize("channels,dtype", [(1, np.uint16), (4, np.float32), (5, np.uint8)])
def test_dtypes_and_channels(tmp_path, channels, dtype):
    img = _image(channels, dtype)
    tifffile.imwrite(tmp_path / "a.tif", img if channels != 1 else img[..., 0], tile=(64, 64),
                     compression="zlib", photometric="minisblack", planarconfig="contig")
    _write_geotiff(tmp_path / "g.tif", img)
    if channels in (1,):
        cv2.imwrite(str(tmp_path / "a.png"), img[..., 0])  # 16-bit PNG
    for name in ("a.tif", "g.tif", "a.png"):
        if not (tmp_path / name).exists():
            continue
        raster = open_raster(tmp_path / name)
        assert (raster.channels, raster.dtype) == (channels, np.dtype(dtype)), name
        for window in WINDOWS:
            np.testing.assert_array_equal(raster.read(window), _expected(img, window), err_msg=name)


def test_geotiff_carries_crs_transform_and_nodata(tmp_path):
    img = _image()
    _write_geotiff(tmp_path / "g.tif", img, nodata=7)
    raster = open_raster(tmp_path / "g.tif")
    assert raster.crs.to_epsg() == 32633
    assert raster.transform == from_origin(500000, 4600000, 0.5, 0.5)
    assert raster.nodata == 7
    if "GDAL_CACHEMAX" not in os.environ:  # random reads: a bounded block cache, not 5% of RAM
        from rasterio._env import get_gdal_config

        assert int(get_gdal_config("GDAL_CACHEMAX")) <= raster_mod.GDAL_CACHE_BYTES
    assert open_raster(tmp_path / "g.tif").read(Window(0, 0, 5, 5)).shape == (5, 5, 3)


@pytest.mark.parametrize("kind", ["tiled_zlib", "striped", "geotiff"])
def test_reflect_padding_and_pad_value(tmp_path, kind):
    img = _image()
    path = tmp_path / "a.tif"
    WRITERS[kind](path, img)
    reflect = open_raster(path, pad_mode="reflect")
    const = open_raster(path, pad_value=9)
    for window in WINDOWS:
        np.testing.assert_array_equal(reflect.read(window), _expected(img, window, "reflect"))
        np.testing.assert_array_equal(const.read(window), _expected(img, window, value=9))
    with pytest.raises(ValueError):
        open_raster(path, pad_mode="wrap")


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(yy / 23.0) * 90 + 128, np.cos(xx / 31.0) * 90 + 128, (yy + xx) / (h + w) * 250], -1)
    return img.astype(np.uint8)


def _write_pyramid(path, levels, ome=False):
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        opts = dict(tile=(64, 64), compression="zlib", photometric="rgb")
        tw.write(levels[0], subifds=len(levels) - 1, **opts)
        for level in levels[1:]:
            tw.write(level, subfiletype=1, **opts)


@pytest.mark.parametrize("ome", [False, True])
def test_pyramid_reads_the_right_level(tmp_path, ome):
    img = _smooth(H, W)
    levels = [img]
    for _ in range(2):
        prev = levels[-1]
        size = ((prev.shape[1] + 1) // 2, (prev.shape[0] + 1) // 2)
        levels.append(cv2.resize(prev, size, interpolation=cv2.INTER_AREA))
    # level content is marked so that the test sees which level answered
    levels[1] = levels[1].copy()
    levels[1][..., 2] = 17
    levels[2] = levels[2].copy()
    levels[2][..., 2] = 33
    path = tmp_path / "pyr.ome.tif"
    _write_pyramid(path, levels, ome=ome)
    raster = open_raster(path)
    assert raster.levels == [lv.shape[:2] for lv in levels]
    # downsample 2 -> exactly level 1, cropped
    out = raster.read(Window(40, 60, 200, 240), out_size=(100, 120))
    np.testing.assert_array_equal(out, levels[1][20:120, 30:150])
    # downsample 3 -> level 1 (level 2 would be coarser than needed), matches a resize of level 0
    out = raster.read(Window(30, 30, 240, 300), out_size=(80, 100))
    assert (out[..., 2] == 17).all()
    ref = cv2.resize(img[30:270, 30:330], (100, 80), interpolation=cv2.INTER_AREA)
    assert np.abs(out[..., :2].astype(int) - ref[..., :2]).mean() < 1.5
    assert (raster.read(Window(0, 0, H, W), out_size=(H // 4, W // 4))[..., 2] == 33).all()
    # slightly less than 2x: level 0
    out = raster.read(Window(0, 0, 200, 200), out_size=(110, 110))
    ref = cv2.resize(img[:200, :200], (110, 110), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, ref)
    thumb, scale = raster.thumbnail(100)
    assert thumb.shape == (66, 100, 3) and scale == pytest.approx(4.57, abs=0.01)
    assert (thumb[..., 2] == 33).all()


def test_upsampling_and_out_size_past_border(tmp_path):
    img = _smooth(H, W)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    raster = open_raster(tmp_path / "a.tif")
    out = raster.read(Window(-10, -10, 50, 60), out_size=(100, 120))
    padded = _expected(img, Window(-10, -10, 50, 60))
    np.testing.assert_array_equal(out, cv2.resize(padded, (120, 100), interpolation=cv2.INTER_LINEAR))
    nearest = raster.read(Window(0, 0, 100, 100), out_size=(50, 50), nearest=True)
    np.testing.assert_array_equal(nearest, cv2.resize(img[:100, :100], (50, 50), interpolation=cv2.INTER_NEAREST_EXACT))


def test_thumbnail_in_strips_matches_one_read(tmp_path, monkeypatch):
    img = _smooth(H, W)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64), compression="zlib")
    raster = open_raster(tmp_path / "a.tif")
    whole, scale = raster.thumbnail(150)
    assert whole.shape == (99, 150, 3) and scale == pytest.approx(W / 150, rel=0.01)
    np.testing.assert_array_equal(whole, cv2.resize(img, (150, 99), interpolation=cv2.INTER_AREA))
    monkeypatch.setattr(raster_mod, "STRIP_BYTES", 20000)  # forces ~20 strips
    strips, _ = raster.thumbnail(150)
    diff = np.abs(strips.astype(int) - whole)  # strip edges fall between source rows: tiny seams
    assert diff.max() <= 6 and diff.mean() < 1.0
    small, scale = raster.thumbnail(1000)  # never enlarged
    assert small.shape == (H, W, 3) and scale == 1.0


def test_pickles_by_path_and_reopens(tmp_path):
    img = _image()
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64), compression="zlib")
    raster = open_raster(tmp_path / "a.tif", pad_mode="reflect")
    first = raster.read(Window(-5, -5, 40, 40))
    blob = pickle.dumps(raster)
    assert len(blob) < 2000  # no decoded data, no file handle
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.read(Window(-5, -5, 40, 40)), first)
    with open_raster(tmp_path / "a.tif") as r:
        r.read(Window(0, 0, 3, 3))
    np.testing.assert_array_equal(r.read(Window(0, 0, 3, 3)), img[:3, :3])  # reopens after close
    cv2.imwrite(str(tmp_path / "a.png"), img)
    png = open_raster(tmp_path / "a.png")
    assert len(pickle.dumps(png)) < 2000


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(SegkitError, match="nope.tif"):
        open_raster(tmp_path / "nope.tif")
    for name, blob in [("bad.tif", b"II*\x00garbage" * 10), ("bad.png", b"not a png"), ("bad.jp2", b"??"),
                       ("empty.tif", b"")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(SegkitError, match=name) as info:
            open_raster(tmp_path / name)
        assert "\n" not in str(info.value)


def _read_in_child(args):
    raster, window = args
    return raster.read(window)


def test_forked_workers_read_through_their_own_handles(tmp_path):
    import multiprocessing

    img = _image()
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64), compression="zlib")
    raster = open_raster(tmp_path / "a.tif")
    raster.read(Window(0, 0, 8, 8))  # the parent's handle is open when the workers fork
    windows = [Window(r, c, 60, 70) for r in range(0, H, 50) for c in range(0, W, 90)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_in_child, [(raster, w) for w in windows] * 2, chunksize=1)
    for window, tile in zip(windows * 2, got):
        np.testing.assert_array_equal(tile, _expected(img, window))


def test_geotiff_overviews_are_pyramid_levels(tmp_path):
    img = _smooth(H, W)
    path = tmp_path / "ov.tif"
    _write_geotiff(path, img)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    raster = open_raster(path)
    assert raster.backend == "rasterio" and raster.levels == [(H, W), (151, 229), (76, 115)]
    with rasterio.open(path, overview_level=0) as ds:
        level1 = ds.read().transpose(1, 2, 0)
    np.testing.assert_array_equal(raster.read(Window(40, 60, 200, 240), out_size=(100, 120)),
                                  level1[20:120, 30:150])
    np.testing.assert_array_equal(raster.read(Window(0, 0, 50, 50)), img[:50, :50])


def test_threads_share_one_raster(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    img = _image()
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(32, 32), compression="zlib")
    raster = open_raster(tmp_path / "a.tif")
    windows = [Window(r, c, 45, 61) for r in range(-20, H, 40) for c in range(-20, W, 55)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(raster.read, windows))
    for window, tile in zip(windows, got):
        np.testing.assert_array_equal(tile, _expected(img, window))
