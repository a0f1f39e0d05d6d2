"""Atomic output writers: RLE CSV, streamed RLE, tiled (Geo)TIFF from row strips."""

import csv
import os
import warnings

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.crs import CRS
from rasterio.transform import from_origin

from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path
from segkit.io.rle import RleStripEncoder, decode, encode
from segkit.io.writers.strips import (
    RleStripWriter,
    TiffStripWriter,
    probs_to_uint8,
    write_rle_csv,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def _strips(array, heights):
    """Split along the row axis (-2) into consecutive strips of the given heights (cycled)."""
    rows = array.shape[-2]
    row0, i = 0, 0
    while row0 < rows:
        h = heights[i % len(heights)]
        yield row0, array[..., row0:row0 + h, :]
        row0 += h
        i += 1


def test_atomic_path_commits_on_success(tmp_path):
    out = tmp_path / "a.txt"
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_text("hello")
        assert not out.exists()
    assert out.read_text() == "hello"
    assert _leftovers(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_path_leaves_nothing_on_exception(tmp_path, exc):
    out = tmp_path / "a.txt"
    with pytest.raises(type(exc)):
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise exc
    assert _leftovers(tmp_path) == []


def test_atomic_path_keeps_existing_file_on_failure(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert _leftovers(tmp_path) == ["a.txt"]


def test_existing_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "sub.csv"
    out.write_text("old")
    with pytest.raises(SegkitError, match=r"sub\.csv: exists \(use --overwrite\)"):
        write_rle_csv(out, [("a", "1 2")])
    assert out.read_text() == "old"
    write_rle_csv(out, [("a", "1 2")], overwrite=True)
    assert out.read_text().splitlines() == ["id,rle", "a,1 2"]


def test_missing_output_folders_are_made_and_removed_again_on_failure(tmp_path):
    write_rle_csv(tmp_path / "new" / "deeper" / "sub.csv", [("a", "1 2")])
    assert (tmp_path / "new" / "deeper" / "sub.csv").read_text().splitlines() == ["id,rle", "a,1 2"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "made" / "for" / "x.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed while writing")
    assert not (tmp_path / "made").exists()  # the folders made for the output are gone with it
    (tmp_path / "file").write_text("")
    with pytest.raises(SegkitError, match="file: is a file, so the output folder .*file/sub cannot be made"):
        write_rle_csv(tmp_path / "file" / "sub" / "sub.csv", [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_output_folder_named(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SegkitError, match="ro: output folder is not writable"):
            write_rle_csv(folder / "sub.csv", [])
    finally:
        folder.chmod(0o700)


def test_unwritable_output_folder_named_even_as_root(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SegkitError, match=f"^{tmp_path}: output folder is not writable"):
        write_rle_csv(tmp_path / "sub.csv", [])


def test_output_path_that_is_a_folder(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(SegkitError, match="out.csv: is a folder"):
        write_rle_csv(tmp_path / "out.csv", [], overwrite=True)


def test_write_rle_csv_content_and_generator_failure(tmp_path):
    out = tmp_path / "sub.csv"
    write_rle_csv(out, iter([("img1", "1 3 10 2"), ("img2", "")]), header=("id", "predicted"))
    with open(out, newline="") as fh:
        assert list(csv.reader(fh)) == [["id", "predicted"], ["img1", "1 3 10 2"], ["img2", ""]]

    def rows():
        yield "a", "1 1"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rle_csv(tmp_path / "b.csv", rows())
    assert _leftovers(tmp_path) == ["sub.csv"]


def _blob_mask(h, w):
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2).astype(np.uint8)
    mask[:, -1] = 1  # touches the right border
    mask[-2:, :5] = 2  # non-zero class ids count as foreground
    return mask


@pytest.mark.parametrize("order", ["F", "C"])
def test_rle_strip_writer_equals_full_mask_rle(tmp_path, order):
    masks = {"a": _blob_mask(37, 23), "b": np.zeros((5, 9), np.uint8)}
    out = tmp_path / "sub.csv"
    with RleStripWriter(out) as writer:
        for image_id, mask in masks.items():
            encoder = RleStripEncoder(*mask.shape, order=order)
            for _, strip in _strips(mask, [7, 3, 11]):
                encoder.add(strip != 0)
            writer.write_row(image_id, encoder.finish())
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "rle"]
    assert rows[1] == ["a", encode(masks["a"] > 0, order=order)]
    assert rows[2] == ["b", ""]
    np.testing.assert_array_equal(decode(rows[1][1], (37, 23), order=order), masks["a"] > 0)


def test_rle_strip_writer_interrupted_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with RleStripWriter(tmp_path / "sub.csv") as writer:
            writer.write_row("a", "1 4")
            raise KeyboardInterrupt
    assert _leftovers(tmp_path) == []


def test_probs_to_uint8():
    p = np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.999], np.float32)
    np.testing.assert_array_equal(probs_to_uint8(p), [0, 128, 255, 255, 0, 255])


@pytest.mark.parametrize("heights", [[5], [16, 3], [50]])
def test_tiff_strip_writer_equals_full_array(tmp_path, heights):
    h, w = 45, 37  # not multiples of the 16 px tile
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, size=(h, w), dtype=np.uint8)
    out = tmp_path / "mask.tif"
    with TiffStripWriter(out, h, w, channels=1, dtype="uint8", tile=16) as writer:
        for _, strip in _strips(mask, heights):
            writer.write(strip)
    np.testing.assert_array_equal(tifffile.imread(out), mask)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (16, 16)
        assert page.compression.name in ("ADOBE_DEFLATE", "DEFLATE")
    assert _leftovers(tmp_path) == ["mask.tif"]


def test_tiff_strip_writer_probs_uint8_multichannel(tmp_path):
    c, h, w = 3, 21, 19
    rng = np.random.default_rng(1)
    probs = rng.random((c, h, w), dtype=np.float32)
    out = tmp_path / "probs.tif"
    with TiffStripWriter(out, h, w, channels=c, dtype="uint8", tile=16) as writer:
        for _, strip in _strips(probs, [4, 9]):
            writer.write(strip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out) as ds:
            np.testing.assert_array_equal(ds.read(), probs_to_uint8(probs))
            assert ds.crs is None


def test_tiff_strip_writer_georeferenced(tmp_path):
    h, w = 30, 20
    mask = (np.arange(h * w).reshape(h, w) % 7 == 0).astype(np.uint8)
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    out = tmp_path / "geo.tif"
    with TiffStripWriter(out, h, w, crs="EPSG:32633", transform=transform, tile=16) as writer:
        for _, strip in _strips(mask, [8]):
            writer.write(strip)
    with rasterio.open(out) as ds:
        assert ds.crs == CRS.from_epsg(32633)
        assert ds.transform == transform
        assert ds.block_shapes == [(16, 16)]
        assert ds.compression.name.lower() == "deflate"
        np.testing.assert_array_equal(ds.read(1), mask)


def test_tiff_strip_writer_interrupted_or_short_leaves_nothing(tmp_path):
    out = tmp_path / "mask.tif"
    with pytest.raises(KeyboardInterrupt):
        with TiffStripWriter(out, 40, 20, tile=16) as writer:
            writer.write(np.ones((20, 20), np.uint8))
            raise KeyboardInterrupt
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="closed after 20 of 40 rows"):
        with TiffStripWriter(out, 40, 20, tile=16) as writer:
            writer.write(np.ones((20, 20), np.uint8))
    assert _leftovers(tmp_path) == []


def test_tiff_strip_writer_refuses_existing_and_bad_strips(tmp_path):
    out = tmp_path / "mask.tif"
    out.write_bytes(b"old")
    with pytest.raises(SegkitError, match="mask.tif: exists"):
        TiffStripWriter(out, 4, 4, tile=16)
    with TiffStripWriter(tmp_path / "m2.tif", 4, 4, tile=16) as writer:
        with pytest.raises(ValueError, match="does not fit"):
            writer.write(np.ones((2, 5), np.uint8))
        with pytest.raises(ValueError, match="exceed height"):
            writer.write(np.ones((5, 4), np.uint8))
        writer.write(np.ones((4, 4), np.uint8))
    assert out.read_bytes() == b"old"


def test_strip_pipeline_equals_full_image(tmp_path):
    """predictor-like strips -> threshold -> StripPostProcessor -> RLE / mask TIFF / polygons."""
    import json

    import cv2
    from rasterio.features import rasterize
    from shapely.geometry import shape

    from segkit.io.writers.polygons import PolygonStripWriter, mask_to_polygons
    from segkit.post.morphology import (
        StripPostProcessor,
        fill_holes,
        remove_small_objects,
        threshold,
    )

    h, w = 53, 41
    rng = np.random.default_rng(5)
    probs = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)[None]
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    full = fill_holes(remove_small_objects(threshold(probs, 0.5), 6))
    assert 0 < full.sum() < full.size and not np.array_equal(full, threshold(probs, 0.5))

    post = StripPostProcessor(h, w, min_px=6, fill=True)
    with RleStripWriter(tmp_path / "sub.csv") as rle, \
            TiffStripWriter(tmp_path / "mask.tif", h, w, tile=16) as tif, \
            PolygonStripWriter(tmp_path / "p.geojson", h, w) as polys:
        encoder = RleStripEncoder(h, w)
        for row0, p in _strips(probs, [8, 13]):
            for _, mask, p_out in post.push(row0, threshold(p, 0.5), p):
                encoder.add(mask != 0)
                tif.write(mask)
                polys.write(mask, p_out)
        post.finish()
        rle.write_row("img", encoder.finish())
    with open(tmp_path / "sub.csv", newline="") as fh:
        assert list(csv.reader(fh))[1] == ["img", encode(full)]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mask.tif"), full)
    features = json.loads((tmp_path / "p.geojson").read_text())["features"]
    expected = mask_to_polygons(full)
    assert sorted(shape(f["geometry"]).area for f in features) == sorted(g.area for g, _ in expected)
    for f in features:  # mean probability of the pixels under each polygon
        inside = rasterize([shape(f["geometry"])], out_shape=(h, w)).astype(bool) & (full == 1)
        assert f["properties"]["mean_prob"] == pytest.approx(float(probs[0][inside].mean()), abs=1e-5)


def test_tiff_strip_writer_overviews(tmp_path):
    h, w = 70, 90
    mask = (np.arange(h * w).reshape(h, w) % 5).astype(np.uint8)
    out = tmp_path / "ov.tif"
    with TiffStripWriter(out, h, w, tile=16, overviews="nearest") as writer:
        for _, strip in _strips(mask, [9]):
            writer.write(strip)
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(70, 90), (35, 45), (18, 23), (9, 12)]
        np.testing.assert_array_equal(levels[0].asarray(), mask)
        np.testing.assert_array_equal(levels[1].asarray(), mask[::2, ::2])
        assert all(p.is_tiled and p.compression.name == "ADOBE_DEFLATE" for p in tif.pages)
    assert _leftovers(tmp_path) == ["ov.tif"]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_float_tiffs_keep_their_values_and_average_overviews_average(tmp_path):
    """Only a uint8 file scales float strips to 0..255; a float32 file stores a float64 strip's
    values as they are. An "average" overview (probabilities) is the 2x2 block mean, not a sample."""
    values = (np.arange(32 * 40, dtype=np.float64).reshape(32, 40) % 7) / 7
    out = tmp_path / "f.tif"
    with TiffStripWriter(out, 32, 40, dtype="float32", tile=16, overviews="average") as writer:
        for _, strip in _strips(values, [5, 11]):
            writer.write(strip)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), values.astype(np.float32))
        assert ds.overviews(1) == [2, 4] and ds.tags(ns="rio_overview") == {"resampling": "average"}
        half = ds.read(1, out_shape=(16, 20))
    blocks = values.astype(np.float32).reshape(16, 2, 20, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(half, blocks, rtol=1e-6)
    with TiffStripWriter(tmp_path / "two.tif", 4, 4, channels=2, tile=16) as writer:
        with pytest.raises(ValueError, match=r"strip shape \(3, 2, 4\) does not fit \(2, h, 4\)"):
            writer.write(np.ones((3, 2, 4), np.uint8))
        with pytest.raises(ValueError, match=r"strip rows 0\+5 exceed height 4"):
            writer.write(np.ones((2, 5, 4), np.uint8))
        writer.write(np.ones((2, 4, 4), np.uint8))
