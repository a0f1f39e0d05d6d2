"""`segkit infer` outputs as viewers open them: QuPath GeoJSON, simplified polygons, WGS 84,
pyramidal mask TIFF / OME-TIFF with colour table and nodata, probabilities with their scale,
and the contest's RLE header and empty cell (reusing the session's tiny trained run)."""

import csv
import json

import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import shape

from segkit.cli import cli

from qupath_import import read_qupath_objects


def infer(*args, expect=0):
    result = CliRunner().invoke(cli, ["infer", "--tta", "none", "--epochs", "last:1", *[str(a) for a in args]])
    assert result.exit_code == expect, result.output
    return result


@pytest.fixture(scope="module")
def big_image(module_tmp, project):
    """264x264 (larger than one 256-px output tile, so the TIFFs get a reduced level): the project's discs tiled."""
    path = module_tmp("big") / "big.tif"
    tile = tifffile.imread(project / "img0.tif")
    image = np.tile(tile, (3, 2))[:264, :264]
    tifffile.imwrite(path, image, tile=(32, 32))
    return path


def test_polygons_import_into_qupath_with_names_and_simplification(tmp_path, trained, project):
    exact, simple = tmp_path / "exact.geojson", tmp_path / "simple.geojson"
    infer("-r", trained, "--polygons", exact, project / "img0.tif")
    infer("-r", trained, "--polygons", simple, "--simplify", 1.5, "--min-polygon-area", 20, "--object-type",
          "detection", "--set", "data.class_names=[background, nucleus]", project / "img0.tif")
    plain, objects = read_qupath_objects(exact), read_qupath_objects(simple)
    assert plain and objects and all(o["type"] == "annotation" and o["class_name"] == "class 1" for o in plain)
    assert all(o["type"] == "detection" and o["class_name"] == "nucleus" for o in objects)
    assert all(set(o["measurements"]) == {"Mean probability", "Area px^2"} for o in objects)
    assert all(o["measurements"]["Area px^2"] >= 20 for o in objects)
    assert len(objects) == sum(o["measurements"]["Area px^2"] >= 20 for o in plain)

    def vertices(objs):
        return sum(len(o["geometry"]["coordinates"][0]) for o in objs if o["measurements"]["Area px^2"] >= 20)

    assert vertices(objects) < 0.8 * vertices(plain)
    for o in objects:   # pixel coordinates, origin top left of the image
        minx, miny, maxx, maxy = shape(o["geometry"]).bounds
        assert 0 <= minx < maxx <= 133 and 0 <= miny < maxy <= 90


def test_wgs84_polygons_of_a_georeferenced_image(tmp_path, trained, project):
    image = tifffile.imread(project / "img0.tif")
    geo = tmp_path / "geo.tif"
    with rasterio.open(geo, "w", driver="GTiff", height=90, width=133, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(image, 1)
    out = tmp_path / "wgs.geojson"
    infer("-r", trained, "--polygons", out, "--geojson-crs", "wgs84", geo)
    doc = json.loads(out.read_text())
    assert "crs" not in doc and doc["features"]
    from rasterio.warp import transform as reproject

    (west, east), (south, north) = reproject("EPSG:32633", "EPSG:4326", [500000, 500000 + 66.5],
                                             [4000000 - 45, 4000000])   # the image's corners
    for feature in doc["features"]:
        lon, lat = np.asarray(feature["geometry"]["coordinates"][0]).T
        assert np.all((lon >= west - 1e-6) & (lon <= east + 1e-6) & (lat >= south - 1e-6) & (lat <= north + 1e-6))
    assert "Area m^2" in doc["features"][0]["properties"]["measurements"]
    result = infer("-r", trained, "--polygons", tmp_path / "w2.geojson", "--geojson-crs", "wgs84",
                   project / "img0.tif", expect=1)
    assert "img0.tif: --geojson-crs wgs84 needs a georeferenced image" in result.output
    assert not (tmp_path / "w2.geojson").exists()


def test_mask_and_probs_tiffs_for_viewers(tmp_path, trained, big_image):
    mask, ome = tmp_path / "m.tif", tmp_path / "p.ome.tif"
    infer("-r", trained, "--mask", mask, "--probs", ome, "--set", "data.class_names=[background, disc]", big_image)
    with rasterio.open(mask) as ds:
        assert ds.overviews(1) == [2] and ds.nodata == 0
        assert ds.colormap(1)[0][3] == 0 and ds.colormap(1)[1] == (255, 64, 64, 255)
        assert ds.tags()["class_names"] == "background,disc"
        values = ds.read(1)
    with tifffile.TiffFile(ome) as tif:                     # probabilities as a pyramidal OME-TIFF
        assert tif.is_ome and len(tif.series[0].levels) == 2 and len(tif.pages.first.subifds) == 1
        assert 'Name="probability of disc"' in tif.ome_metadata and "value / 255" in tif.ome_metadata
        raw = tif.series[0].asarray()
    with rasterio.open(ome) as ds:                          # GDAL reads the scale carried over
        assert ds.scales == (1 / 255,) and ds.overviews(1) == [2]
        p = raw * ds.scales[0]
    # the mask is the float probability >= 0.5; the TIFF holds it rounded to uint8: they differ only
    # where the rounding crosses 0.5 (stored 127 or 128)
    disagree = (p >= 0.5) != (values == 1)
    assert np.isin(np.broadcast_to(raw, disagree.shape)[disagree], (127, 128)).all()
    assert (values == 1).any() and (values == 0).any()


@pytest.mark.parametrize("header, empty", [("ImageId,EncodedPixels", "-"), ("id,predicted", "")])
def test_rle_header_and_empty_cell(tmp_path, trained, project, header, empty):
    out = tmp_path / "sub.csv"
    infer("-r", trained, "--rle", out, "--rle-header", header, "--rle-empty", empty, "--threshold", 1.0,
          project / "img0.tif")
    rows = list(csv.reader(open(out, newline="")))
    assert rows == [header.split(","), ["img0", empty]]
