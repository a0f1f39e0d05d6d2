"""Polygons from masks and strips: seams merged, holes kept, GeoJSON in the raster's CRS."""

import json

import numpy as np
import pytest
from conftest import row_strips
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import Point, shape

from segkit.ground.errors import SegkitError
from segkit.io.vector import PolygonStripWriter, geojson_crs, mask_to_polygons


def _objects(mask):
    """Independent reference: (class, pixel count) of every 4-connected region, sorted."""
    out = []
    for cls in np.unique(mask):
        if cls:
            lab, n = ndimage.label(mask == cls)
            out += [(int(cls), int(c)) for c in np.bincount(lab.ravel())[1:]]
    return sorted(out)


def _seam_mask():
    m = np.zeros((40, 31), np.uint8)
    m[2:35, 3:6] = 1                 # tall bar across many seams
    m[8:30, 10:25] = 1
    m[12:26, 14:21] = 0              # hole crossing seams
    m[16:20, 16:19] = 2              # other class inside the hole
    m[5:9, 20] = 2
    m[9, 21] = 2                     # diagonal only: a separate polygon (4-connectivity)
    m[32:40, 27:31] = 1              # touches bottom/right border
    # U shape whose arms join only in a lower strip
    m[31:36, 9] = 1
    m[31:36, 13] = 1
    m[36, 9:14] = 1
    m[0, :] = 2                      # top border row
    return m


def test_mask_to_polygons_pixel_coords_holes_and_classes():
    m = np.zeros((6, 7), np.uint8)
    m[1:5, 1:6] = 1
    m[2:4, 2:4] = 0
    m[0, 6] = 2
    polys = mask_to_polygons(m)
    assert sorted((cls, g.area) for g, cls in polys) == [(1, 16.0), (2, 1.0)]
    ring = next(g for g, cls in polys if cls == 1)
    assert ring.bounds == (1.0, 1.0, 6.0, 5.0)
    assert len(ring.interiors) == 1 and ring.interiors[0].length == 8
    assert [c for _, c in mask_to_polygons(m, min_area=2)] == [1]
    assert mask_to_polygons(np.zeros((3, 4), bool)) == []
    assert [c for _, c in mask_to_polygons(m.astype(bool))] == [1, 1]


def test_full_mask_polygons_match_connected_components():
    m = _seam_mask()
    polys = mask_to_polygons(m)
    assert sorted((cls, int(g.area)) for g, cls in polys) == _objects(m)
    assert all(g.is_valid and g.geom_type == "Polygon" for g, _ in polys)


def _strip_features(tmp_path, m, heights, probs=None, name="p.geojson", **kw):
    out = tmp_path / name
    with PolygonStripWriter(out, *m.shape, **kw) as writer:
        for row0, s in row_strips(m, heights):
            writer.write(s, None if probs is None else probs[:, row0:row0 + s.shape[0]])
    return json.loads(out.read_text())


@pytest.mark.parametrize("heights", [[1], [3, 5], [7], [40]])
def test_polygons_from_strips_equal_full_mask(tmp_path, heights):
    m = _seam_mask()
    doc = _strip_features(tmp_path, m, heights)
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    got = sorted((f["properties"]["class"], shape(f["geometry"]).area) for f in doc["features"])
    full = sorted((cls, g.area) for g, cls in mask_to_polygons(m))
    assert got == full == [(c, float(a)) for c, a in _objects(m)]
    holes = sum(len(shape(f["geometry"]).interiors) for f in doc["features"])
    assert holes == sum(len(g.interiors) for g, _ in mask_to_polygons(m)) >= 2
    for f in doc["features"]:
        g = shape(f["geometry"])
        assert g.is_valid and g.geom_type == "Polygon"
        assert f["properties"]["mean_prob"] is None


def test_polygons_from_strips_random_masks(tmp_path):
    rng = np.random.default_rng(7)
    for seed in range(3):
        m = (rng.random((33, 26)) < 0.45).astype(np.uint8) * rng.integers(1, 3, size=(33, 26)).astype(np.uint8)
        doc = _strip_features(tmp_path, m, [4, 2, 9], name=f"r{seed}.geojson")
        got = sorted((f["properties"]["class"], int(round(shape(f["geometry"]).area))) for f in doc["features"])
        assert got == _objects(m)


def test_mean_prob_property_binary_and_softmax(tmp_path):
    m = np.zeros((10, 8), np.uint8)
    m[1:9, 1:3] = 1                  # crosses seams
    m[4:6, 5:7] = 2
    p1 = np.zeros((1, 10, 8), np.float32)
    p1[0, 1:9, 1:3] = np.linspace(0.5, 1.0, 16, dtype=np.float32).reshape(8, 2)
    doc = _strip_features(tmp_path, (m == 1).astype(np.uint8), [3], probs=p1, name="b.geojson")
    (f,) = doc["features"]
    assert f["properties"]["mean_prob"] == pytest.approx(0.75, abs=1e-6)
    p3 = np.zeros((3, 10, 8), np.float32)
    p3[1] = 0.6
    p3[2] = 0.9
    doc = _strip_features(tmp_path, m, [4], probs=p3, name="s.geojson")
    props = sorted((f["properties"]["class"], f["properties"]["mean_prob"]) for f in doc["features"])
    assert props == [(1, pytest.approx(0.6)), (2, pytest.approx(0.9))]


def test_geojson_lands_on_map_position(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[4:8, 10:14] = 1                # pixel rows 4..7, cols 10..13
    m[5:7, 11:13] = 0                # with a 2x2 hole
    m[12:15, 20:22] = 1              # crosses the seam at row 13 (merged path)
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    doc = _strip_features(tmp_path, m, [13], transform=transform, crs="EPSG:32633")
    assert doc["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    square, bar = sorted((shape(f["geometry"]) for f in doc["features"]), key=lambda g: g.bounds)
    assert square.bounds == (500005.0, 3999996.0, 500007.0, 3999998.0)
    assert square.area == 12 * 0.25 and len(square.interiors) == 1
    assert square.interiors[0].bounds == (500005.5, 3999996.5, 500006.5, 3999997.5)
    assert bar.bounds == (500010.0, 3999992.5, 500011.0, 3999994.0) and bar.area == 6 * 0.25
    for g in (square, bar):  # RFC 7946 winding after the y flip, on both writer paths
        assert g.exterior.is_ccw and all(not ring.is_ccw for ring in g.interiors)
    assert square.contains(Point(500005.25, 3999997.0)) and not square.contains(Point(500006.0, 3999997.0))
    geo = sorted((g for g, _ in mask_to_polygons(m, transform=transform)), key=lambda g: g.bounds)
    assert geo[0].equals(square) and geo[1].equals(bar)


def test_simplify_and_min_area(tmp_path):
    m = np.zeros((30, 30), np.uint8)
    yy, xx = np.mgrid[:30, :30]
    m[(yy - 15) ** 2 + (xx - 15) ** 2 < 100] = 1
    m[1, 1] = 1
    doc = _strip_features(tmp_path, m, [6], simplify=1.0, min_area=2)
    (f,) = doc["features"]
    g = shape(f["geometry"])
    raw = [p for p, _ in mask_to_polygons(m) if p.area > 1][0]
    assert len(g.exterior.coords) < len(raw.exterior.coords)
    assert abs(g.area - raw.area) / raw.area < 0.05


def test_geojson_writer_atomic_and_refuses_existing(tmp_path):
    m = np.ones((6, 5), np.uint8)
    out = tmp_path / "p.geojson"
    with pytest.raises(KeyboardInterrupt):
        with PolygonStripWriter(out, 6, 5) as writer:
            writer.write(m[:3])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="got 3 rows, image height is 6"):
        with PolygonStripWriter(out, 6, 5) as writer:
            writer.write(m[:3])
    assert list(tmp_path.iterdir()) == []
    out.write_text("old")
    with pytest.raises(SegkitError, match="p.geojson: exists"):
        PolygonStripWriter(out, 6, 5)
    assert out.read_text() == "old"


def test_geojson_crs_from_wkt_like_input():
    assert geojson_crs(4326)["properties"]["name"] == "urn:ogc:def:crs:EPSG::4326"
