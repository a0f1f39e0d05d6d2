"""Instance labels in (id raster, polygons, per-object RLE), targets, object RLE, streaming watershed."""

from __future__ import annotations

import csv
import json
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile

from segkit.data.targets import TargetSpec, instance_targets, parse_targets, read_targets
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io.writers.instance_rle import ObjectRleEncoder, encode_objects
from segkit.io.labels.instances import open_instances
from segkit.io.images.raster import open_raster
from segkit.io.rle import encode
from segkit.metrics.objects import match_objects
from segkit.post.watershed import StripWatershed, watershed_instances

H, W = 37, 45  # not multiples of anything


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering the ids: every object of a is exactly one object of b."""
    m = match_objects(a, b)
    return len(m.pred_ids) == len(m.true_ids) == int((m.iou == 1).sum())


@pytest.fixture
def ids() -> np.ndarray:
    out = np.zeros((H, W), np.int32)
    out[2:10, 3:11] = 7            # two touching squares
    out[2:10, 11:19] = 9
    out[20:37, 30:45] = 300        # touches the bottom and right image edges
    cv2.circle(out, (12, 28), 5, 42, -1)
    return out


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.arange(H * W, dtype=np.uint16).reshape(H, W))
    return open_raster(path)


# ------------------------------------------------------------------ sources


def _write_rle(path, ids, order="F", image_id="img"):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "EncodedPixels"])
        for k in np.unique(ids)[1:]:
            writer.writerow([image_id, encode(ids == k, order=order)])


def _write_polygons(path, ids, feature_ids=None):
    from rasterio.features import shapes

    features = []
    for i, (geom, value) in enumerate(shapes(ids, mask=ids > 0, connectivity=4)):
        feature = {"type": "Feature", "properties": {}, "geometry": geom}
        if feature_ids is not None:
            feature["id"] = feature_ids[i]
        features.append(feature)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


@pytest.mark.parametrize("kind", ["raster", "polygons", "rle_F", "rle_C"])
def test_every_source_reads_the_objects_per_window(kind, ids, image, tmp_path):
    if kind == "raster":
        path = tmp_path / "ids.tif"
        tifffile.imwrite(path, ids.astype(np.uint16))
        source = open_instances(path, image)
    elif kind == "polygons":
        path = tmp_path / "ids.geojson"
        _write_polygons(path, ids)
        source = open_instances(path, image)
    else:
        order = kind[-1]
        path = tmp_path / "ids.csv"
        _write_rle(path, ids, order=order)
        source = open_instances(path, image, rle_order=order)
    whole = source.read_instances(Window(0, 0, H, W))
    assert _same_partition(whole, ids)
    assert (whole[2:10, 10] != whole[2:10, 11]).all()      # touching squares stay two objects
    window = Window(-3, 20, 30, 40)                         # past the top and the right edge
    part = source.read_instances(window)
    padded = np.zeros((H + 3, W + 15), np.int32)
    padded[3:, :W] = whole
    assert np.array_equal(part, padded[0:30, 20:60])
    assert np.array_equal(source.read(Window(0, 0, H, W)), (ids > 0).astype(np.uint8))


def test_bad_instance_inputs(ids, image, tmp_path):
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, ids.astype(np.float32) + 0.5 * (ids == 9))
    with pytest.raises(SegkitError, match=r"float.tif: instance ids must be integers, found 9.5"):
        open_instances(floats, image)
    whole = tmp_path / "whole_floats.tif"
    tifffile.imwrite(whole, ids.astype(np.float32))
    assert _same_partition(open_instances(whole, image).read_instances(Window(0, 0, H, W)), ids)

    overlapping = tmp_path / "overlap.csv"
    _write_rle(overlapping, ids)
    with open(overlapping, "a") as fh:
        fh.write(f"img,{encode(ids == 9)}\n")                  # object 9 once more, on line 6
    with pytest.raises(SegkitError, match=r"overlap.csv: id img: objects of lines 3 and 6 overlap"):
        open_instances(overlapping, image)

    split = tmp_path / "split.geojson"
    n = _write_polygons(split, ids, feature_ids=["a", "b", "a", "c"])
    assert n == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_instances(split, image)
    ours = [w for w in caught if w.category is UserWarning]  # not rasterio's NotGeoreferencedWarning
    assert [str(w.message).split(": ", 1)[1] for w in ours] == [
        "1 object(s) split across several features (e.g. id 'a' in 2 features); each was read as one object"]
    assert len(np.unique(source.read_instances(Window(0, 0, H, W)))) - 1 == 3


# ------------------------------------------------------------------ targets


def test_targets_of_two_touching_squares_exactly():
    ids = np.zeros((8, 12), np.int32)
    ids[2:6, 2:6], ids[2:6, 6:10] = 1, 2
    body, border, contact = instance_targets(ids, ("body", "border", "contact"), border_px=1, contact_px=1)
    assert np.array_equal(body, ids > 0)
    ring = np.zeros_like(body)
    ring[2:6, 2:10] = 1
    ring[3:5, 3:5] = ring[3:5, 7:9] = 0                      # inner ring of each square
    assert np.array_equal(border, ring)
    expected = np.zeros_like(body)
    expected[2:6, 5:7] = 1                                    # the two columns where they touch
    assert np.array_equal(contact, expected)
    # a one-pixel gap between the squares is contact too (within 1 px of both)
    gap = np.zeros((8, 13), np.int32)
    gap[2:6, 2:6], gap[2:6, 7:11] = 1, 2
    assert np.flatnonzero(instance_targets(gap, ("contact",), contact_px=1)[0].any(axis=0)).tolist() == [6]


def test_targets_at_window_edges_equal_the_whole_image(ids, image, tmp_path):
    path = tmp_path / "ids.tif"
    tifffile.imwrite(path, ids.astype(np.uint16))
    source = open_instances(path, image)
    spec = TargetSpec(parse_targets("instances"), border_px=2, contact_px=3)
    padded = np.zeros((H + 20, W + 20), np.int32)
    padded[10:-10, 10:-10] = ids
    whole = instance_targets(padded, spec.names, border_px=2, contact_px=3)[:, 10:-10, 10:-10]
    for window in (Window(0, 0, 6, 11), Window(4, 7, 9, 9), Window(25, 35, 20, 20), Window(-4, -4, 16, 16)):
        got = read_targets(source, window, spec)                     # cuts through objects
        r0, c0, h, w = window
        expect = np.zeros((3, h, w), np.uint8)
        rs, cs = slice(max(r0, 0), min(r0 + h, H)), slice(max(c0, 0), min(c0 + w, W))
        expect[:, rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0] = whole[:, rs, cs]
        assert np.array_equal(got.transpose(2, 0, 1), expect), window
    assert read_targets(source, Window(0, 0, 20, 20), spec, out_size=(10, 10)).shape == (10, 10, 3)
    with pytest.raises(SegkitError, match="unknown target 'edges'"):
        parse_targets(["body", "edges"])


# ------------------------------------------------------------------ object RLE


@pytest.mark.parametrize("order", ["F", "C"])
def test_object_rle_round_trips_through_strips(order, ids, image, tmp_path):
    rows = encode_objects(ids, order=order)
    assert [k for k, _ in rows] == [7, 9, 42, 300]
    assert all(text == encode(ids == k, order=order) for k, text in rows)
    encoder, streamed = ObjectRleEncoder(H, W, order=order), []
    for r0 in range(0, H, 5):
        streamed += encoder.add(ids[r0:r0 + 5])
    streamed += encoder.finish()
    assert sorted(streamed) == rows
    path = tmp_path / "objects.csv"
    path.write_text("ImageId,EncodedPixels\n" + "".join(f"img,{text}\n" for _, text in rows))
    back = open_instances(path, image, rle_order=order).read_instances(Window(0, 0, H, W))
    assert _same_partition(back, ids)


# ------------------------------------------------------------------ watershed


def _probs(shape=(150, 97), count=30, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros(shape, np.int32)
    for k in range(1, count + 1):
        centre = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        axes = tuple(int(v) for v in rng.integers(4, 22, 2))
        cv2.ellipse(ids, centre, axes, float(rng.integers(0, 180)), 0, 360, k, -1)
    targets = instance_targets(ids, ("body", "border", "contact")).astype(np.float32)
    blurred = cv2.GaussianBlur(targets.transpose(1, 2, 0), (7, 7), 2).transpose(2, 0, 1)
    return np.clip(blurred + rng.normal(0, 0.05, blurred.shape), 0, 1).astype(np.float32)


def test_watershed_on_strips_equals_the_whole_image():
    names = ("body", "border", "contact")
    probs = _probs()
    whole = watershed_instances(probs, names)
    seams = [r for r in range(1, probs.shape[1]) if len(set(np.unique(whole[r - 1])) & set(np.unique(whole[r])) - {0})]
    assert len(seams) > 50                                  # objects cross most seams of 1-row strips
    touching = (whole[:, :-1] > 0) & (whole[:, 1:] > 0) & (whole[:, :-1] != whole[:, 1:])
    assert touching.any()                                   # and the watershed split touching objects
    for height in (1, 7, 32, 150):
        stream = StripWatershed(probs.shape[1], probs.shape[2], names)
        strips = list(stream((r, probs[:, r:r + height]) for r in range(0, probs.shape[1], height)))
        assert [r for r, _, _ in strips] == sorted(r for r, _, _ in strips)
        got = np.concatenate([s for _, s, _ in strips])
        assert got.shape == whole.shape
        assert len(np.unique(got)) == len(np.unique(whole))
        assert sorted(np.bincount(got.ravel())[1:]) == sorted(np.bincount(whole.ravel())[1:])
        assert _same_partition(got, whole)


def test_watershed_splits_touching_objects_and_keeps_seedless_ones():
    body = np.zeros((20, 30), np.float32)
    body[5:15, 3:23] = 0.9                                  # two touching objects ...
    border = np.zeros_like(body)
    border[5:15, 12:14] = 0.9                               # ... with a border between them
    body[2:4, 26:28] = 0.6                                  # a faint object: no seed
    instances = watershed_instances(np.stack([body, border]), ("body", "border"))
    assert len(np.unique(instances)) == 4
    assert instances[10, 5] != instances[10, 20] and instances[3, 26] > 0


# ------------------------------------------------------------------ object outputs (no model)


def test_object_outputs_from_strips_are_georeferenced_and_one_per_object(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from segkit.infer.instances import infer_objects
    from segkit.ground.config import load_config
    from segkit.infer.outputs import WriterOptions
    from segkit.post.watershed import SeedSettings

    names = ("body", "border", "contact")
    probs = _probs(shape=(90, 70), count=12, seed=3)
    image = tmp_path / "geo.tif"
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    with rasterio.open(image, "w", driver="GTiff", height=90, width=70, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as ds:
        ds.write(np.zeros((1, 90, 70), np.uint8))
    # the fields of segkit.infer.run.Settings that infer_objects reads (that module imports torch)
    writing = WriterOptions.from_config(load_config(None, ["data.targets=instances"]))
    assert writing.object_type == "detection"
    settings = SimpleNamespace(writing=writing, seeds=SeedSettings(),
                               rle_per_object=True, rle_order="F")
    paths = {"instances": tmp_path / "ids.tif", "polygons": tmp_path / "objects.geojson", "mask": tmp_path / "m.tif",
             "probs": None, "rle": True}
    strips = ((r, probs[:, r:r + 7]) for r in range(0, 90, 7))       # objects cross many seams
    rle, written = infer_objects(strips, image, paths, names, settings, overwrite=False)
    whole = watershed_instances(probs, names, SeedSettings())
    with rasterio.open(paths["instances"]) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == transform and ds.dtypes[0] == "uint32"
        ids = ds.read(1).astype(np.int64)
    assert _same_partition(ids, whole)
    n = len(np.unique(whole)) - 1
    features = json.loads(paths["polygons"].read_text())["features"]
    assert len(features) == n == len(rle)
    from shapely.geometry import shape

    areas = sorted(round(shape(f["geometry"]).area / 0.25) for f in features)   # map units: 0.25 m^2 a pixel
    assert areas == sorted(np.bincount(ids.ravel())[1:][np.bincount(ids.ravel())[1:] > 0].tolist())
    assert np.array_equal(tifffile.imread(paths["mask"]), (whole > 0).astype(np.uint8))
    assert sorted(map(str, written)) == sorted(str(p) for p in (paths["instances"], paths["polygons"], paths["mask"]))


def test_a_region_taller_than_max_rows_is_cut_and_memory_stays_bounded():
    body = np.zeros((300, 40), np.float32)
    body[:, 10:30] = 0.9                                     # one region as tall as the image
    body[100:110, 10:30] = 0.6                               # ... whose seed is interrupted: two objects
    probs = np.stack([body, np.zeros_like(body)])
    names = ("body", "border")
    assert len(np.unique(watershed_instances(probs, names))) == 3
    stream = StripWatershed(300, 40, names, max_rows=64, chunk_rows=16)
    held = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = []
        for r in range(0, 300, 16):
            out += stream.push(r, probs[:, r:r + 16])
            held.append(stream._gid.shape[0])
    got = np.concatenate([s for _, s, _ in out])
    assert got.shape == (300, 40) and (got[:, 10:30] > 0).all()
    assert max(held) <= 64 + 16 and len(caught) == 1 and caught[0].category is UserWarning
    # a cut each time more than 64 rows are held, half of max_rows above the last row held
    assert stream.cut_rows == [48, 96, 144, 192, 240]
    assert str(caught[0].message) == ("watershed: an object region is taller than 64 rows; cut at row 48 "
                                      "(objects crossing the cut get two ids)")
    assert [r for r, _, _ in out] == list(np.cumsum([0] + [s.shape[0] for _, s, _ in out[:-1]]))
    assert len(np.unique(got)) - 1 > 2                       # split at the cuts, as the warning says
    exact = StripWatershed(300, 40, names, chunk_rows=16)     # default max_rows: exact
    assert _same_partition(np.concatenate([s for _, s, _ in exact((r, probs[:, r:r + 16]) for r in range(0, 300, 16))]),
                           watershed_instances(probs, names)) and not exact.cut_rows


def test_a_binary_mask_given_as_instances_warns(ids, image, tmp_path):
    path = tmp_path / "binary.tif"
    tifffile.imwrite(path, (ids > 0).astype(np.uint8) * 255)
    with pytest.warns(UserWarning, match=r"binary.tif: looks like a binary mask \(values \[0, 255\]\)"):
        open_instances(path, image)
