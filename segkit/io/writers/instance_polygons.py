"""One GeoJSON feature per object, from instance-id strips (the --polygons output of instance runs).

Each object's pixels are polygonized per strip (GDAL polygonize through
``rasterio.features.shapes``, 4-connected, holes kept); ids are unique over the whole image
(segkit.post.watershed.StripWatershed), so the pieces of an object that crosses a seam are simply
merged by id (``shapely.unary_union``). Touching objects stay separate features. An object is
written once it is absent from the last row received, so only objects crossing the current seam
are held. Properties as segkit.io.writers.polygons.PolygonStripWriter (QuPath's objectType, classification
and measurements, ``mean_prob`` = mean body probability) plus ``object_id``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.io.writers.polygons import FeatureStream, _union
from segkit.io.writers.strips import StripOutput

__all__ = ["InstancePolygonWriter"]


class InstancePolygonWriter(StripOutput):
    """GeoJSON FeatureCollection, one feature per object, written from (h, W) id strips in row order.

    ``write(instances, body=None)``: int ids (0 = background) and optionally the (h, W) body
    probability for ``mean_prob``. ``object_type``: QuPath's, ``detection`` for nuclei and cells;
    ``options``: segkit.io.writers.polygons.FeatureStream's (transform, crs, simplify and min_area in pixels,
    overwrite, geojson_crs, class_names: class 1's name), as PolygonStripWriter takes them.
    Committed atomically on a clean close.
    """

    def __init__(self, path, height: int, width: int, *, object_type: str = "detection", **options):
        self.height, self.width = int(height), int(width)
        self.row0 = 0
        self._open: dict[int, list] = {}   # id -> [pieces, prob sum, pixel count]
        self._with_probs: bool | None = None
        self._out = FeatureStream(path, object_type=object_type, **options)

    @property
    def count(self) -> int:
        return self._out.count

    def write(self, instances: np.ndarray, body: np.ndarray | None = None) -> None:
        from rasterio.features import shapes
        from rasterio.transform import Affine

        instances = np.asarray(instances)
        h = instances.shape[0]
        if instances.ndim != 2 or instances.shape[1] != self.width or self.row0 + h > self.height:
            raise ValueError(f"instance strip {instances.shape} at row {self.row0} does not fit "
                             f"{self.height}x{self.width}")
        if self._with_probs is None:
            self._with_probs = body is not None
        sel = instances > 0
        if sel.any():
            ids, inverse, counts = np.unique(instances[sel], return_inverse=True, return_counts=True)
            sums = (np.bincount(inverse, weights=np.asarray(body)[sel].astype(np.float64), minlength=ids.size)
                    if body is not None else np.zeros(ids.size))
            for k, s, n in zip(ids.tolist(), sums.tolist(), counts.tolist()):
                entry = self._open.setdefault(int(k), [[], 0.0, 0])
                entry[1] += s
                entry[2] += n
            # int32 for GDAL: ids of one image stay below 2**31
            found = shapes(instances.astype(np.int32, copy=False), mask=sel, connectivity=4,
                           transform=Affine.translation(0, self.row0))
            for geom, value in found:
                self._open[int(value)][0].append(geom)
        self.row0 += h
        still = set(np.unique(instances[-1]).tolist()) if self.row0 < self.height and h else set()
        self._emit(sorted(k for k in self._open if k not in still))

    add = write

    def _emit(self, ids: list[int]) -> None:
        done = [(k, *self._open.pop(k)) for k in ids]
        self._out.write([(_union(pieces), 1, psum, count, {"object_id": k}) for k, pieces, psum, count in done],
                        self._with_probs)

    def close(self) -> Path:
        def last():
            if self.row0 != self.height:
                raise ValueError(f"got {self.row0} rows, image height is {self.height}")
            self._emit(sorted(self._open))
        return self._out.close(last)

    def abort(self) -> None:
        self._out.abort()
