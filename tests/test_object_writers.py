"""Per-object writers from instance-id strips: object RLE and object polygons, exact per object."""

import json

import numpy as np
import pytest

from segkit.io.rle import encode
from segkit.io.writers.instance_rle import ObjectRleEncoder, encode_objects


def test_object_polygons_carry_each_objects_mean_probability_and_pixel_count(tmp_path):
    """An object crossing several strips: its mean_prob and pixel-count measurement sum over every
    strip (exact values); a feature per object, QuPath detections by default."""
    from shapely.geometry import shape

    from segkit.io.writers.instance_polygons import InstancePolygonWriter
    from segkit.io.writers.qupath import AREA_PX

    ids = np.zeros((9, 7), np.int32)
    ids[1:8, 1:3] = 5                                   # 14 px over three strips
    ids[2:4, 4:7] = 2                                   # 6 px in one strip
    body = np.zeros((9, 7), np.float32)
    body[1:8, 1:3] = np.arange(14, dtype=np.float32).reshape(7, 2) / 20   # mean 6.5 / 20
    body[2:4, 4:7] = 0.9
    out = tmp_path / "objects.geojson"
    with InstancePolygonWriter(out, 9, 7) as writer:
        for r in (0, 3, 6):
            writer.write(ids[r:r + 3], body[r:r + 3])
    features = {f["properties"]["object_id"]: f for f in json.loads(out.read_text())["features"]}
    assert sorted(features) == [2, 5]
    five, two = features[5]["properties"], features[2]["properties"]
    assert five["mean_prob"] == pytest.approx(6.5 / 20) and two["mean_prob"] == pytest.approx(0.9)
    assert five["measurements"][AREA_PX] == 14 and two["measurements"][AREA_PX] == 6
    assert shape(features[5]["geometry"]).area == 14 and five["objectType"] == "detection"
    assert shape(features[5]["geometry"]).bounds == (1, 1, 3, 8) and shape(features[2]["geometry"]).bounds == (4, 2, 7, 4)
    assert five["class"] == two["class"] == 1                           # objects are class 1
    writer = InstancePolygonWriter(tmp_path / "y.geojson", 9, 7)
    with pytest.raises(ValueError, match=r"instance strip \(3, 6\) at row 0 does not fit 9x7"):
        writer.write(np.zeros((3, 6), np.int32))
    writer.write(ids[:3])
    with pytest.raises(ValueError, match=r"instance strip \(7, 7\) at row 3 does not fit 9x7"):
        writer.write(ids[:7])
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.geojson"]


@pytest.mark.parametrize("order", ["F", "C"])
def test_object_rle_of_objects_starting_on_a_strips_last_row(order):
    """An object that appears first on the last row of a strip is still open; 1-row strips count."""
    ids = np.zeros((6, 5), np.int32)
    ids[2:6, 1:3] = 4                                    # starts on row 2, the last row of strip 0-2
    ids[0, 4] = 9                                        # done after row 0
    expected = [(4, encode(ids == 4, order)), (9, encode(ids == 9, order))]
    for heights in ([3, 3], [1] * 6):
        encoder = ObjectRleEncoder(6, 5, order)
        rows, r = [], 0
        for h in heights:
            rows += encoder.add(ids[r:r + h])
            r += h
        rows += encoder.finish()
        assert sorted(rows) == expected
    assert encode_objects(ids, order) == expected
    encoder = ObjectRleEncoder(6, 5, order)
    with pytest.raises(ValueError, match=r"strip \(2, 4\) at row 0 does not fit the 6x5 image"):
        encoder.add(np.zeros((2, 4), np.int32))
    encoder.add(ids[:4])
    with pytest.raises(ValueError, match=r"strip \(3, 5\) at row 4 does not fit the 6x5 image"):
        encoder.add(ids[:3])
    with pytest.raises(ValueError, match="got 4 rows, image height is 6"):
        encoder.finish()
