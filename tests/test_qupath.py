"""QuPath feature properties and the shared class palette."""

import json

import pytest

from segkit.io.classes import PALETTE, class_colour, class_name
from segkit.io.writers.qupath import AREA_PX, MEAN_PROB, qupath_properties

from qupath_import import read_qupath_objects


def test_class_colour_is_fixed_per_id_and_background_black():
    assert class_colour(0) == (0, 0, 0)
    assert class_colour(1) == PALETTE[0] and class_colour(2) == PALETTE[1]
    assert class_colour(len(PALETTE) + 1) == PALETTE[0]
    assert len(set(PALETTE)) == len(PALETTE)


def test_class_name_from_names_or_id():
    assert class_name(1, ["background", "nucleus"]) == "nucleus"
    assert class_name(2, ["background", "nucleus"]) == "class 2"
    assert class_name(3) == "class 3"


def test_properties_read_by_the_qupath_importer(tmp_path):
    props = qupath_properties(2, class_names=["bg", "tumour", "stroma"], object_type="detection", mean_prob=0.75,
                              area_px=12, pixel_area=0.25, area_unit="m", measurements={"skip": None, "x": 1})
    feature = {"type": "Feature", "properties": props,
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]]]}}
    path = tmp_path / "one.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    (obj,) = read_qupath_objects(path)
    assert obj["type"] == "detection" and obj["class_name"] == "stroma"
    assert obj["color"] & 0xFFFFFF == (64 << 16) | (255 << 8) | 64
    assert obj["measurements"] == {MEAN_PROB: 0.75, AREA_PX: 12.0, "Area m^2": 3.0, "x": 1.0}


def test_missing_values_are_left_out_and_bad_type_refused():
    props = qupath_properties(1, mean_prob=float("nan"))
    assert props["measurements"] == {} and props["objectType"] == "annotation"
    assert props["classification"] == {"name": "class 1", "color": list(PALETTE[0])}
    with pytest.raises(ValueError, match="object type"):
        qupath_properties(1, object_type="polygon")
