"""Read a GeoJSON file the way QuPath's importer does (a test helper, not a test module).

Mirrors ``PathObjectTypeAdapter.parseObject`` of QuPath (qupath-core, qupath.lib.io): the type
comes from ``properties.objectType`` (annotation when absent; an unknown name is an annotation
with a warning), the class from ``properties.classification`` ``{name, color: [r, g, b]}``, the
measurements from ``properties.measurements`` read as a map of doubles (Gson's
``Map<String, Double>``: a null or a string there is a failure), the geometry from
``geometry`` in pixel coordinates. Everything else in ``properties`` is ignored.
"""

import json
import numbers

QUPATH_TYPES = {"annotation", "detection", "cell", "tile", "tmaCore", "tma_core", "root"}


def _pack_rgb(color):
    assert isinstance(color, list) and len(color) == 3, f"classification color {color!r}: expected [r, g, b]"
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in color), f"classification color {color!r}"
    r, g, b = color
    return (255 << 24) | (r << 16) | (g << 8) | b   # ColorTools.packRGB


def read_qupath_objects(path):
    """[{type, class_name, color, measurements, geometry}] for every feature, or AssertionError."""
    doc = json.loads(open(path).read())
    features = doc["features"] if isinstance(doc, dict) else doc
    objects = []
    for feature in features:
        assert feature.get("type") == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        props = feature.get("properties") or {}
        kind = props.get("objectType", "annotation")
        assert isinstance(kind, str) and kind in QUPATH_TYPES, f"objectType {kind!r}"
        cls = props.get("classification")
        name = color = None
        if cls is not None:
            assert isinstance(cls, dict) and isinstance(cls.get("name"), str), f"classification {cls!r}"
            name, color = cls["name"], _pack_rgb(cls["color"])
        measurements = {}
        if isinstance(props.get("measurements"), (dict, list)):
            raw = props["measurements"]
            pairs = raw.items() if isinstance(raw, dict) else [(m["name"], m["value"]) for m in raw]
            for key, value in pairs:
                assert isinstance(key, str)
                assert isinstance(value, numbers.Real) and not isinstance(value, bool), f"measurement {key}={value!r}"
                measurements[key] = float(value)
        objects.append({"type": kind, "class_name": name, "color": color, "measurements": measurements,
                        "geometry": geometry})
    return objects
