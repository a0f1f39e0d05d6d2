"""GeoJSON of regions to review: rectangles as QuPath annotations classified ``Review``.

An annotator opens the slide in QuPath, imports the file (File > Import objects from file, or
drag and drop) and finds each region in the annotation list, named by its rank, with its scores
as measurements. For a GeoTIFF the coordinates are in the raster's CRS by default (``raster``
frame, segkit.io.writers.geojson), so QGIS draws the same rectangles over the scene; ``pixel``
writes pixel coordinates always (what QuPath reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from segkit.ground.geometry import Window
from segkit.io.atomic import write_json
from segkit.io.writers.geojson import CoordinateFrame
from segkit.io.writers.qupath import qupath_properties

REVIEW = "Review"  # the QuPath classification of every suggested region


def rectangle_ring(window: Window) -> np.ndarray:
    """The closed ring (5, 2) of a window's outline in pixel x/y (corners on integers)."""
    r0, c0, r1, c1 = window.row, window.col, window.bottom, window.right
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], np.float64)


def review_collection(windows: Sequence[Window], measurements: Sequence[Mapping[str, float]], *,
                      frame: CoordinateFrame, names: Sequence[str]) -> dict:
    """A FeatureCollection with one ``Review`` annotation per window (measurements and name each)."""
    geometries = frame.geometries([[[rectangle_ring(w)]] for w in windows])
    features = []
    for geometry, values, name in zip(geometries, measurements, names):
        properties = qupath_properties(1, class_names=("background", REVIEW), object_type="annotation",
                                       measurements=values)
        properties["name"] = str(name)
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {**frame.header(), "features": features}


def write_review(path: str | Path, windows: Sequence[Window], measurements: Sequence[Mapping[str, float]], *,
                 names: Sequence[str], geojson_crs: str = "raster", crs=None, transform=None,
                 overwrite: bool = False) -> Path:
    """Write :func:`review_collection` atomically (held back inside staged_commits)."""
    frame = CoordinateFrame(geojson_crs, crs=crs, transform=transform, source=str(path))
    return write_json(path, review_collection(windows, measurements, frame=frame, names=names), overwrite=overwrite)
