"""Mask/probability TIFFs for viewers: overviews, colour table, nodata, probability scale, pyramidal OME-TIFF."""

import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.transform import from_origin

from segkit.io.writers.ome import OmeTiffStripWriter, is_ome_path
from segkit.io.writers.strips import TiffStripWriter

from conftest import row_strips

H, W = 150, 203  # not multiples of the 32-px tile


def _mask():
    m = np.zeros((H, W), np.uint8)
    m[10:90, 20:150] = 1
    m[100:, :60] = 2
    return m


def test_class_mask_tiff_has_colour_table_nodata_and_overviews(tmp_path):
    out, m = tmp_path / "m.tif", _mask()
    colormap = {0: (0, 0, 0, 0), 1: (255, 64, 64, 255), 2: (64, 255, 64, 255)}
    with TiffStripWriter(out, H, W, tile=32, overviews="nearest", colormap=colormap, nodata=0,
                         descriptions=["class id"], tags={"class_names": "background,tumour,stroma"}) as w:
        for _, s in row_strips(m, [17]):
            w.write(s)
    with rasterio.open(out) as ds:
        assert (ds.read(1) == m).all()
        assert ds.overviews(1) == [2, 4, 8]
        assert ds.nodata == 0 and ds.descriptions == ("class id",)
        assert ds.colormap(1)[1] == (255, 64, 64, 255) and ds.colormap(1)[0] == (0, 0, 0, 0)
        assert ds.tags()["class_names"] == "background,tumour,stroma"


def test_probability_tiff_records_its_scale(tmp_path):
    out = tmp_path / "p.tif"
    probs = np.linspace(0, 1, 2 * H * W, dtype=np.float32).reshape(2, H, W)
    with TiffStripWriter(out, H, W, 2, tile=32, overviews="average", scales=[1 / 255] * 2, offsets=[0, 0],
                         descriptions=["probability of a", "probability of b"]) as w:
        for row0, s in row_strips(probs[0], [40]):
            w.write(probs[:, row0:row0 + s.shape[0]])
    with rasterio.open(out) as ds:
        assert ds.scales == (1 / 255, 1 / 255) and ds.offsets == (0, 0)
        raw = ds.read()
        assert np.abs(raw * ds.scales[0] + ds.offsets[0] - probs).max() <= 0.5 / 255 + 1e-6
        assert ds.overviews(2) == [2, 4, 8]


@pytest.mark.parametrize("side, magic", [(70000, b"II+\x00"), (4000, b"II*\x00")])
def test_a_tiff_that_may_pass_4_gb_is_bigtiff_and_a_smaller_one_classic(tmp_path, side, magic):
    """BIGTIFF=IF_SAFER: GDAL chooses when the file is created, from its declared size. A 70000 px
    square of uint8 (4.9 GB before deflate) must be BigTIFF (a classic TIFF's 32-bit offsets would
    fail mid-write; GDAL's default, IF_NEEDED, ignores compression and picks classic); a small one
    stays classic TIFF, which every reader opens. The GDAL file is closed without its rows (its
    empty tiles are written in milliseconds) to read the header, then discarded."""
    writer = TiffStripWriter(tmp_path / "big.tif", side, side, tile=512)
    scratch = writer._atomic.tmp
    writer._ds.close()
    try:
        assert scratch.read_bytes()[:4] == magic  # "II+": BigTIFF, "II*": classic TIFF
    finally:
        writer._atomic.discard()
    assert list(tmp_path.iterdir()) == []


def test_ome_tiff_is_a_pyramid_with_georeferencing(tmp_path):
    out, m = tmp_path / "m.ome.tif", _mask()
    assert is_ome_path(out) and is_ome_path("A.OME.TIFF") and not is_ome_path("a.tif")
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    with OmeTiffStripWriter(out, H, W, tile=32, overviews="nearest", channel_names=["class"], crs="EPSG:32633",
                            transform=transform, nodata=0) as w:
        for _, s in row_strips(m, [23, 50]):
            w.write(s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.tif"]   # no scratch file left
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].axes == "YX"
        assert tif.is_bigtiff  # written before its size is known: BigTIFF always (QuPath and Bio-Formats read it)
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(150, 203), (75, 102), (38, 51), (19, 26)]
        assert len(tif.pages.first.subifds) == 3                      # reduced levels are SubIFDs
        # flagged reduced-resolution (what viewers look for), every level tiled and compressed
        assert [lv.keyframe.subfiletype for lv in levels] == [0, 1, 1, 1]
        assert all(lv.keyframe.compression.name in ("ADOBE_DEFLATE", "DEFLATE") and lv.keyframe.is_tiled
                   for lv in levels)
        assert (levels[0].asarray() == m).all()
        half = levels[1].asarray()                                       # nearest: class ids stay class ids
        assert set(np.unique(half)) == {0, 1, 2}
        assert all(abs((half == k).mean() - (m == k).mean()) < 0.02 for k in (0, 1, 2))
        assert 'Name="class"' in tif.ome_metadata
    with rasterio.open(out) as ds:                                      # GDAL still reads the GeoTIFF keys
        assert ds.crs.to_epsg() == 32633 and ds.transform == transform and ds.nodata == 0


def test_ome_tiff_multichannel_probabilities(tmp_path):
    out = tmp_path / "p.ome.tiff"
    probs = np.random.default_rng(0).random((3, H, W), dtype=np.float32)
    with OmeTiffStripWriter(out, H, W, 3, tile=32, overviews="average", channel_names=["bg", "a", "b"],
                            description="probability = value / 255") as w:
        for row0, s in row_strips(probs[0], [64]):
            w.write(probs[:, row0:row0 + s.shape[0]])
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert tif.is_ome and series.axes == "CYX" and series.shape == (3, H, W) and len(series.levels) == 4
        assert np.abs(series.asarray() / 255 - probs).max() <= 0.5 / 255 + 1e-6
        assert "<Description>probability = value / 255</Description>" in tif.ome_metadata


def test_ome_tiff_interrupted_leaves_nothing(tmp_path):
    out, m = tmp_path / "m.ome.tif", _mask()
    with pytest.raises(KeyboardInterrupt):
        with OmeTiffStripWriter(out, H, W, tile=32) as w:
            w.write(m[:40])
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="closed after 40 of 150 rows"):
        with OmeTiffStripWriter(out, H, W, tile=32) as w:
            w.write(m[:40])
    assert list(tmp_path.iterdir()) == []
