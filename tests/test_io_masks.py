"""open_labels: mask raster, RLE CSV and polygons give identical windows; classes; CRS; bad input."""

import json
import pickle

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.features import shapes
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io import rle
from segkit.io.masks import open_labels
from segkit.io.raster import open_raster

H, W = 301, 457
TRANSFORM = from_origin(500000, 4600000, 0.5, 0.5)
WINDOWS = [Window(0, 0, H, W), Window(10, 20, 100, 130), Window(250, 400, 100, 100),
           Window(-30, -40, 90, 120), Window(500, 600, 20, 30), Window(0, 95, 301, 11), Window(123, 0, 1, 457)]


def _mask():
    """Binary objects touching every border, one with a hole, one a single pixel, runs that
    continue from one column into the next."""
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (100, 100), 60, 1, -1)
    cv2.circle(m, (100, 100), 20, 0, -1)  # hole
    cv2.rectangle(m, (300, 0), (456, 50), 1, -1)
    cv2.ellipse(m, (230, 250), (70, 30), 25, 0, 360, 1, -1)
    m[280:, 440:] = 1
    m[150:, 0:3] = 1
    m[200, 300] = 1
    return m


def _expected(m, window, mode="constant"):
    r0, c0, h, w = window
    if mode == "reflect":
        return np.pad(m, ((h, h), (w, w)), mode="reflect")[r0 + h:r0 + 2 * h, c0 + w:c0 + 2 * w]
    out = np.zeros((h, w), m.dtype)
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r0 + h, H), max(c0, 0), min(c0 + w, W)
    if ir0 < ir1 and ic0 < ic1:
        out[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = m[ir0:ir1, ic0:ic1]
    return out


def _features(m, values=None):
    """Exact polygons of the mask (pixel edges, holes as interior rings)."""
    return [{"type": "Feature", "properties": {"kind": (values or {}).get(int(v), "x")}, "geometry": g}
            for g, v in shapes(m, mask=m > 0)]


@pytest.fixture()
def data(tmp_path):
    m = _mask()
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(yy * 7 + xx * 3) % 251, (yy * xx) % 253, (yy + 2 * xx) % 255], -1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "slide.tif", img, tile=(64, 64), compression="zlib")
    cv2.imwrite(str(tmp_path / "mask.png"), m * 255)
    tifffile.imwrite(tmp_path / "mask.tif", m, tile=(32, 32), compression="zlib")
    with open(tmp_path / "train.csv", "w") as fh:
        fh.write(f"id,encoding\nother,1 5\nslide,{rle.encode(m)}\n")
    (tmp_path / "slide.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": _features(m)}))
    (tmp_path / "hubmap.json").write_text(json.dumps(_features(m)))  # HuBMAP: a bare list of features
    return tmp_path, m


SPECS = ["mask.png", "mask.tif", "train.csv", "slide.geojson", "hubmap.json"]


@pytest.mark.parametrize("spec", SPECS)
def test_label_sources_give_identical_windows(data, spec):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    labels = open_labels(folder / spec, image)
    for window in WINDOWS:
        got = labels.read(window)
        assert got.dtype == np.uint8 and got.shape == (window.height, window.width)
        np.testing.assert_array_equal(got, _expected(m, window), err_msg=f"{spec} {window}")
    for out in [(100, 140), (50, 70), (66, 93), (400, 560)]:  # integer scales 2 and 4, fractional, up
        resized = labels.read(Window(7, 9, 200, 280), out_size=out)
        want = cv2.resize(m[7:207, 9:289], out[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(resized, want, err_msg=f"{spec} {out}")
    np.testing.assert_array_equal(labels.read(Window(-8, 300, 40, 180), out_size=(20, 90)),
                                  _expected(m, Window(-8, 300, 40, 180))[1::2, 1::2])
    reflect = open_labels(folder / spec, open_raster(folder / "slide.tif", pad_mode="reflect"))
    for window in WINDOWS[1:4]:
        np.testing.assert_array_equal(reflect.read(window), _expected(m, window, "reflect"))
    clone = pickle.loads(pickle.dumps(labels))
    np.testing.assert_array_equal(clone.read(WINDOWS[1]), _expected(m, WINDOWS[1]))


def _block_max(m, oh, ow):
    rows = np.floor(np.arange(oh + 1) * H / oh).astype(int)
    cols = np.floor(np.arange(ow + 1) * W / ow).astype(int)
    return np.array([[m[rows[i]:rows[i + 1], cols[j]:cols[j + 1]].max() for j in range(ow)] for i in range(oh)])


@pytest.mark.parametrize("spec", SPECS)
def test_thumbnails_keep_small_objects(data, spec):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    thumb, scale = open_labels(folder / spec, image).thumbnail(100)
    assert thumb.shape == image.thumbnail(100)[0].shape[:2] == (66, 100)
    assert scale == pytest.approx(image.thumbnail(100)[1])
    expected = _block_max(m, 66, 100)
    assert expected[44, 65] == 1  # the single pixel survives
    if spec.endswith("json"):  # polygons: any touched block (a superset of the block max)
        assert (thumb >= expected).all() and (thumb != expected).mean() < 0.05
    else:
        np.testing.assert_array_equal(thumb, expected)


def test_rle_row_major_merged_rows_and_empty(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    top, bottom = m.copy(), m.copy()
    top[150:], bottom[:150] = 0, 0
    with open(tmp_path / "c.csv", "w") as fh:  # two rows for one id, row-major order, extra column
        fh.write(f"ImageId,EncodedPixels,x\nslide,{rle.encode(top, 'C')},1\nslide,{rle.encode(bottom, 'C')},2\n"
                 "empty,,3\n")
    labels = open_labels(tmp_path / "c.csv", image, rle_order="C", class_map={1: 3})
    for window in WINDOWS:
        np.testing.assert_array_equal(labels.read(window), _expected(m, window) * 3)
    empty = open_labels(tmp_path / "c.csv", image, image_id="empty", rle_order="C")
    assert empty.read(Window(0, 0, H, W)).max() == 0 and empty.thumbnail(50)[0].max() == 0


def test_rle_matches_decode_on_a_random_mask(tmp_path, data):
    folder, _ = data
    rng = np.random.default_rng(3)
    noisy = (rng.random((H, W)) < 0.3).astype(np.uint8)  # many short runs across column ends
    (tmp_path / "n.csv").write_text(f"id,rle\nslide,{rle.encode(noisy)}\n")
    labels = open_labels(tmp_path / "n.csv", open_raster(folder / "slide.tif"))
    full = rle.decode(rle.encode(noisy), (H, W))
    for window in WINDOWS:
        np.testing.assert_array_equal(labels.read(window), _expected(full, window))


def test_multiclass_raster_and_polygons(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    classes = np.zeros((H, W), np.uint8)
    classes[m > 0] = 40
    classes[:, 200:][m[:, 200:] > 0] = 90
    classes[0:10, 0:10] = 7  # a value not in the class map: background
    cv2.imwrite(str(tmp_path / "multi.png"), classes)
    want = np.select([classes == 40, classes == 90], [1, 2], 0).astype(np.uint8)
    raster = open_labels(tmp_path / "multi.png", image, class_map={40: 1, 90: 2})
    np.testing.assert_array_equal(raster.read(Window(0, 0, H, W)), want)
    # polygons with a nested class property (HuBMAP: properties.classification.name)
    feats = [{"type": "Feature", "geometry": g,
              "properties": {"classification": {"name": {40: "glomerulus", 90: "vessel", 7: "other"}[int(v)]}}}
             for g, v in shapes(classes, mask=classes > 0)]
    (tmp_path / "multi.json").write_text(json.dumps(feats))
    polys = open_labels(tmp_path / "multi.json", image, class_property="classification.name",
                        class_map={"glomerulus": 1, "vessel": 2})
    np.testing.assert_array_equal(polys.read(Window(0, 0, H, W)), want)
    with pytest.raises(SegkitError, match="multi.json.*classification.name"):
        open_labels(tmp_path / "multi.json", image, class_property="missing.classification.name")


def test_mask_255_reads_as_one_and_uint16_masks(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    assert open_labels(folder / "mask.png", image).read(Window(0, 0, H, W)).max() == 1
    tifffile.imwrite(tmp_path / "m16.tif", m.astype(np.uint16) * 1000, tile=(32, 32))
    labels = open_labels(tmp_path / "m16.tif", image, class_map={1000: 5})
    np.testing.assert_array_equal(labels.read(Window(0, 0, H, W)), m * 5)
    with pytest.raises(SegkitError, match="m16.tif"):
        open_labels(tmp_path / "m16.tif", image).read(Window(0, 0, H, W))


def _geotiff(path):
    img = np.full((H, W, 3), 128, np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=TRANSFORM) as ds:
        ds.write(img.transpose(2, 0, 1))
    return open_raster(path)


def _map(geom, fn):
    def walk(c):
        return list(fn(c[0], c[1])) if isinstance(c[0], (int, float)) else [walk(x) for x in c]
    return {"type": geom["type"], "coordinates": walk(geom["coordinates"])}


def test_polygons_in_crs_coordinates(tmp_path, data):
    folder, m = data
    image = _geotiff(tmp_path / "geo.tif")
    feats = _features(m)
    in_crs = [dict(f, geometry=_map(f["geometry"], lambda x, y: TRANSFORM @ (x, y))) for f in feats]
    named = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
             "features": in_crs}
    (tmp_path / "named.geojson").write_text(json.dumps(named))
    (tmp_path / "bare.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": in_crs}))
    for name in ("named.geojson", "bare.geojson"):
        labels = open_labels(tmp_path / name, image)
        np.testing.assert_array_equal(labels.read(Window(0, 0, H, W)), m, err_msg=name)
    # RFC 7946 lon/lat: reprojected, equal but for pixels whose centres sit on a reprojected edge
    lonlat = [dict(f, geometry=transform_geom("EPSG:32633", "EPSG:4326", f["geometry"], precision=-1))
              for f in in_crs]
    (tmp_path / "ll.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": lonlat}))
    got = open_labels(tmp_path / "ll.geojson", image).read(Window(0, 0, H, W))
    assert (got != m).mean() < 0.002
    # the same pixel polygons read as pixels when told so
    (tmp_path / "px.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    np.testing.assert_array_equal(open_labels(tmp_path / "px.geojson", image, coords="pixel").read(
        Window(0, 0, H, W)), m)


# -- bad input: one SegkitError naming the file -------------------------------------------------
def test_label_raster_size_differs(tmp_path, data):
    folder, m = data
    cv2.imwrite(str(tmp_path / "small.png"), m[:-1] * 255)
    with pytest.raises(SegkitError, match=r"small\.png.*slide\.tif"):
        open_labels(tmp_path / "small.png", open_raster(folder / "slide.tif"))


@pytest.mark.parametrize("content,match", [
    ("id,rle\nslide,1 5 9\n", "odd number"),
    (f"id,rle\nslide,1 5 {H * W} 2\n", "past the"),
    ("id,rle\nslide,0 5\n", "start 0 < 1"),
    ("id,rle\nslide,1 x\n", "not an integer"),
    ("id,rle\nsomething_else,1 5\n", "no row with id 'slide'"),
    ("", "empty CSV"),
])
def test_bad_rle(tmp_path, data, content, match):
    folder, _ = data
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(SegkitError, match=match) as info:
        open_labels(tmp_path / "bad.csv", open_raster(folder / "slide.tif"))
    assert str(tmp_path / "bad.csv") in str(info.value) and "\n" not in str(info.value)


def test_bad_polygons(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    far = [dict(f, geometry=_map(f["geometry"], lambda x, y: (x + 5000, y))) for f in _features(m)]
    (tmp_path / "far.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": far}))
    with pytest.raises(SegkitError, match=r"far\.geojson.*outside"):
        open_labels(tmp_path / "far.geojson", image)
    bogus = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:999999"}},
             "features": _features(m)}
    (tmp_path / "bogus.geojson").write_text(json.dumps(bogus))
    with pytest.raises(SegkitError, match=r"bogus\.geojson.*cannot transform"):
        open_labels(tmp_path / "bogus.geojson", _geotiff(tmp_path / "geo.tif"))
    with pytest.raises(SegkitError, match=r"bogus\.geojson.*no CRS"):
        open_labels(tmp_path / "bogus.geojson", image)  # CRS polygons on a plain TIFF
    (tmp_path / "odd.json").write_text(json.dumps([{"type": "Feature", "properties": {},
                                                     "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]))
    with pytest.raises(SegkitError, match=r"odd\.json.*malformed"):
        open_labels(tmp_path / "odd.json", image)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SegkitError, match=r"broken\.json"):
        open_labels(tmp_path / "broken.json", image)
    with pytest.raises(SegkitError, match=r"missing\.png"):
        open_labels(tmp_path / "missing.png", image)


def test_rle_csv_quoting_bom_and_edits(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    text = rle.encode(m)
    # BOM, quoted ids, a quoted multi-line note in another column (forces the plain csv scan)
    (tmp_path / "q.csv").write_text(f'\ufeffid,encoding,note\n"slide","{text}",x\nb,1 2,"two\nlines"\n',
                                    encoding="utf-8")
    np.testing.assert_array_equal(open_labels(tmp_path / "q.csv", image).read(Window(0, 0, H, W)), m)
    (tmp_path / "q.csv").write_text(f'id,rle\n"slide",{text}\n')
    np.testing.assert_array_equal(open_labels(tmp_path / "q.csv", image).read(Window(0, 0, H, W)), m)
    # the per-process row index notices an edited file
    (tmp_path / "q.csv").write_text("id,rle\nslide,1 3\n")
    assert open_labels(tmp_path / "q.csv", image).read(Window(0, 0, 4, 1))[:, 0].tolist() == [1, 1, 1, 0]
    # the image file name works as id too
    (tmp_path / "n.csv").write_text("id,rle\nslide.tif,1 2\n")
    assert open_labels(tmp_path / "n.csv", image).read(Window(0, 0, 3, 1))[:, 0].tolist() == [1, 1, 0]


def test_colour_masks_map_rgb_to_classes(tmp_path, data):
    folder, m = data
    image = open_raster(folder / "slide.tif")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[m > 0] = (255, 0, 0)
    rgb[:, 300:][m[:, 300:] > 0] = (0, 0, 255)
    rgb[:5, :5] = (9, 9, 9)  # unlisted colour
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])
    labels = open_labels(tmp_path / "rgb.png", image, class_map={"255,0,0": 1, (0, 0, 255): 2})
    want = m.copy()
    want[:, 300:] *= 2
    want[:5, :5] = 0
    np.testing.assert_array_equal(labels.read(Window(0, 0, H, W)), want)
    with pytest.raises(SegkitError, match="mask.png.*colours"):
        open_labels(folder / "mask.png", image, class_map={"255,0,0": 1})
    with pytest.raises(SegkitError, match="rgb.png.*mixes"):
        open_labels(tmp_path / "rgb.png", image, class_map={"255,0,0": 1, 7: 2})
