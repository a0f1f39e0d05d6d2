"""Polygons from masks and strips: seams merged, holes kept, GeoJSON in the raster's CRS."""

import json

import numpy as np
import pytest
from conftest import row_strips
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import Point, shape

from segkit.ground.errors import SegkitError
from segkit.io.writers.geojson import geojson_crs
from segkit.io.writers.polygons import PolygonStripWriter, mask_to_polygons
from qupath_import import read_qupath_objects


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


def _binary_with_probs():
    m = np.zeros((12, 9), np.uint8)
    m[1:10, 1:3] = 1                 # crosses the seams
    m[4:6, 5:8] = 1
    probs = np.where(m[None] > 0, 0.8, 0.1).astype(np.float32)
    return m, probs


@pytest.mark.parametrize("object_type", ["annotation", "detection"])
def test_features_import_into_qupath(tmp_path, object_type):
    m, probs = _binary_with_probs()
    out = tmp_path / "q.geojson"
    with PolygonStripWriter(out, *m.shape, object_type=object_type, class_names=["background", "nucleus"]) as w:
        for row0, s in row_strips(m, [5]):
            w.write(s, probs[:, row0:row0 + s.shape[0]])
    objects = read_qupath_objects(out)
    assert len(objects) == 2 and {o["type"] for o in objects} == {object_type}
    assert {o["class_name"] for o in objects} == {"nucleus"}
    assert {o["color"] & 0xFFFFFF for o in objects} == {(255 << 16) | (64 << 8) | 64}
    areas = sorted(o["measurements"]["Area px^2"] for o in objects)
    assert areas == [6.0, 18.0] == sorted(shape(o["geometry"]).area for o in objects)
    assert all(o["measurements"]["Mean probability"] == pytest.approx(0.8) for o in objects)
    doc = json.loads(out.read_text())   # segkit's own properties are kept for GIS users
    assert {f["properties"]["class"] for f in doc["features"]} == {1}
    assert all(f["properties"]["mean_prob"] == pytest.approx(0.8) for f in doc["features"])


def test_georeferenced_raster_in_pixel_frame_has_map_area(tmp_path):
    m, _ = _binary_with_probs()
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    doc = _strip_features(tmp_path, m, [4], transform=transform, crs="EPSG:32633", geojson_crs="pixel")
    assert "crs" not in doc
    bounds = sorted(shape(f["geometry"]).bounds for f in doc["features"])
    assert bounds == [(1.0, 1.0, 3.0, 10.0), (5.0, 4.0, 8.0, 6.0)]   # pixel corners, origin top left
    (small,) = [o for o in read_qupath_objects(tmp_path / "p.geojson") if o["measurements"]["Area px^2"] == 6]
    assert small["measurements"]["Area m^2"] == 1.5 and "Mean probability" not in small["measurements"]


def test_wgs84_file_round_trips_to_the_raster_crs_within_a_pixel(tmp_path):
    from rasterio.warp import transform as reproject

    m, _ = _binary_with_probs()
    transform = from_origin(500000, 4000000, 10, 10)
    ref = _strip_features(tmp_path, m, [5], transform=transform, crs="EPSG:32633", name="utm.geojson")
    doc = _strip_features(tmp_path, m, [5], transform=transform, crs="EPSG:32633", geojson_crs="wgs84")
    assert "crs" not in doc                               # RFC 7946: WGS 84 implied
    assert len(doc["features"]) == len(ref["features"]) == 2
    for f, r in zip(doc["features"], ref["features"]):
        ring = np.asarray(f["geometry"]["coordinates"][0])
        assert np.all(np.abs(ring[:, 0] - 15) < 0.01) and np.all(np.abs(ring[:, 1] - 36.1) < 0.1)  # lon, lat
        assert all(round(v, 7) == v for v in ring.ravel().tolist())      # 7 decimals
        assert shape(f["geometry"]).exterior.is_ccw
        x, y = reproject("EPSG:4326", "EPSG:32633", ring[:, 0], ring[:, 1])
        back, expected = np.column_stack([x, y]), np.asarray(r["geometry"]["coordinates"][0])
        assert np.abs(back - expected).max() < 0.05 * 10                     # within 1/20 of a 10 m pixel


def test_wgs84_needs_a_georeferenced_raster(tmp_path):
    with pytest.raises(SegkitError, match="wgs84 needs a georeferenced image"):
        PolygonStripWriter(tmp_path / "w.geojson", 4, 4, geojson_crs="wgs84")
    with pytest.raises(SegkitError, match="expected one of raster, pixel, wgs84"):
        PolygonStripWriter(tmp_path / "w.geojson", 4, 4, geojson_crs="utm")
    assert list(tmp_path.iterdir()) == []


def test_mean_prob_without_a_background_channel_and_three_classes(tmp_path):
    """Sigmoid multi-label outputs have no background channel: class k's probability is channel
    k - 1. Three classes, one region each, so every class's id offset is exercised."""
    m = np.zeros((6, 9), np.uint8)
    m[1:5, 0:2], m[1:5, 3:5], m[1:5, 6:9] = 1, 2, 3
    probs = np.stack([np.full((6, 9), v, np.float32) for v in (0.55, 0.65, 0.75)])
    doc = _strip_features(tmp_path, m, [2, 4], probs=probs, background_channel=False)
    props = sorted((f["properties"]["class"], f["properties"]["mean_prob"], shape(f["geometry"]).area)
                   for f in doc["features"])
    assert props == [(1, pytest.approx(0.55), 8.0), (2, pytest.approx(0.65), 8.0), (3, pytest.approx(0.75), 12.0)]


def test_a_rotated_transform_maps_every_term_and_several_polygons_make_a_multipolygon():
    from affine import Affine

    from segkit.io.writers.geojson import CoordinateFrame
    from segkit.io.writers.polygons import polygon_rings

    t = Affine(2.0, 0.5, 100.0, 0.25, -3.0, 50.0)          # scaled, sheared: b and d are not 0
    frame = CoordinateFrame("raster", crs="EPSG:32633", transform=t)
    np.testing.assert_allclose(frame.map_xy(np.array([[0, 0], [4, 2]])), [[100, 50], [100 + 8 + 1, 50 + 1 - 6]])
    assert frame.pixel_area == pytest.approx(abs(2.0 * -3.0 - 0.5 * 0.25)) and frame.area_unit == "m"
    square = [np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)]
    other = [np.array([[3, 3], [4, 3], [4, 4], [3, 4], [3, 3]], float)]
    (one, two) = CoordinateFrame("pixel").geometries([[square], [square, other]])
    assert one["type"] == "Polygon" and two["type"] == "MultiPolygon" and len(two["coordinates"]) == 2
    assert shape(two).area == 2.0 and shape(one).exterior.is_ccw     # exteriors counter-clockwise
    # a shapely MultiPolygon and a GDAL dict polygon with a hole give their rings
    from shapely.geometry import MultiPolygon, Polygon

    multi = MultiPolygon([Polygon(square[0]), Polygon(other[0])])
    assert [len(p) for p in polygon_rings(multi)] == [1, 1]
    ring = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    hole = [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]]
    (rings,) = polygon_rings({"type": "Polygon", "coordinates": [ring, hole]})
    assert [r.tolist() for r in rings] == [ring, hole] and rings[0].dtype == np.float64
    (simple,) = polygon_rings({"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]},
                              simplify=0.5)
    assert len(simple[0]) == 5                                        # the collinear vertex goes


def test_min_area_keeps_an_object_of_exactly_that_area_and_class_ids_past_255(tmp_path):
    m = np.zeros((6, 8), np.uint16)
    m[1:3, 1:4] = 300                                      # 6 px, a class id past uint8
    m[4, 6] = 2                                            # 1 px
    assert [(c, g.area) for g, c in mask_to_polygons(m, min_area=6)] == [(300, 6.0)]
    out = tmp_path / "m.geojson"
    with PolygonStripWriter(out, 6, 8, min_area=6) as writer:
        with pytest.raises(ValueError, match=r"mask strip shape \(2, 7\) does not fit \(h, 8\)"):
            writer.write(m[:2, :7])
        writer.write(m[:4])
        with pytest.raises(ValueError, match="strip rows 4\\+3 exceed height 6"):
            writer.write(m[:3])
        writer.write(m[4:])
    features = json.loads(out.read_text())["features"]
    assert [f["properties"]["class"] for f in features] == [300] and writer.count == 1
