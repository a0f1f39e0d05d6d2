"""QuPath's GeoJSON feature properties: objectType, classification and measurements.

QuPath's importer (``qupath.lib.io.QuPathTypeAdapters.PathObjectTypeAdapter``, File > Import
objects from file) reads from a feature's ``properties`` only:

- ``objectType``: ``annotation`` (default when absent), ``detection``, ``cell``, ``tile``, ...;
- ``classification``: ``{"name": str, "color": [r, g, b]}`` (the PathClass; QuPath >= 0.4);
- ``measurements``: ``{name: number}`` (a map of doubles; a null or string value breaks it, so
  missing values are left out, as QuPath's own Python library qubalab does);
- ``name``, ``color``, ``isLocked``, ``metadata``; everything else is ignored.

Geometry must be in pixel coordinates with the origin at the top left of the full-resolution
image (QuPath has no CRS). ``qupath_properties`` is the one place segkit builds these, so
polygon, object and tile outputs all import the same way.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from segkit.io.classes import class_colour, class_name

__all__ = ["OBJECT_TYPES", "qupath_properties", "MEAN_PROB", "AREA_PX"]

OBJECT_TYPES = ("annotation", "detection")  # what segkit writes; QuPath also knows cell, tile, tmaCore
MEAN_PROB = "Mean probability"
AREA_PX = "Area px^2"


def qupath_properties(class_id: int, *, class_names: Sequence[str] | None = None, object_type: str = "annotation",
                      mean_prob: float | None = None, area_px: float | None = None, pixel_area: float | None = None,
                      area_unit: str | None = None, measurements: Mapping[str, float] | None = None) -> dict:
    """``objectType``, ``classification`` and ``measurements`` of one feature, as QuPath reads them.

    ``class_names`` is ``data.class_names`` (index = class id, 0 = background); the colour is the
    class's fixed colour (``segkit.io.classes.class_colour``). Measurements: ``Mean probability``
    (when given), ``Area px^2`` (when given) and, when ``pixel_area`` (map units² per pixel, the
    absolute determinant of the raster's affine transform) is given, ``Area <unit>^2`` in map
    units. ``measurements`` adds more (e.g. per-object shape features). None and NaN values
    are left out.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object type {object_type!r}: expected one of {', '.join(OBJECT_TYPES)}")
    values: dict[str, float] = {}
    if mean_prob is not None:
        values[MEAN_PROB] = float(mean_prob)
    if area_px is not None:
        values[AREA_PX] = float(area_px)
        if pixel_area is not None:
            values[f"Area {area_unit or 'map units'}^2"] = float(area_px) * float(pixel_area)
    for key, value in (measurements or {}).items():
        if value is not None:
            values[str(key)] = float(value)
    return {
        "objectType": object_type,
        "classification": {"name": class_name(class_id, class_names), "color": list(class_colour(class_id))},
        "measurements": {k: v for k, v in values.items() if math.isfinite(v)},
    }
