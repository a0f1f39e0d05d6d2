"""Masks to polygons and GeoJSON, streamed from row strips with the seams merged.

Polygons are 4-connected regions of one class (GDAL polygonize through
``rasterio.features.shapes``), holes kept. Geometry is built in pixel coordinates (x = column,
y = row, pixel corners on integers, so pieces from neighbouring strips share exact edges) and
mapped to the output frame (``segkit.io.writers.geojson``: pixels, the raster's CRS or WGS 84) only
when written, with QuPath's properties (``segkit.io.writers.qupath``) next to segkit's own.

Seams: each strip is polygonized alone. The last row of component labels of the previous strip
is kept; a component of the new strip whose first-row pixel sits under a pixel of the same
class is the same object, so the pieces are joined (union-find) and their geometries merged
with ``shapely.unary_union``. A polygon is finished (written) once it no longer touches the
bottom of the rows seen so far, so only polygons crossing the current seam are held. The result
equals the polygons of the full mask (same count, same area).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from segkit.io.atomic import AtomicFile
from segkit.io.writers.geojson import CoordinateFrame
from segkit.io.writers.qupath import qupath_properties
from segkit.io.writers.strips import StripOutput

__all__ = ["mask_to_polygons", "polygon_rings", "PolygonStripWriter", "PolygonAssembler"]


def _label_strip(mask: np.ndarray, probs: np.ndarray | None, background_channel: bool):
    """Components per class: int32 labels (0 = none) and per-label class, prob sum, pixel count."""
    labels = np.zeros(mask.shape, np.int32)
    classes, sums, counts = [np.zeros(1, np.int64)], [np.zeros(1)], [np.zeros(1, np.int64)]
    offset = 0
    for cls in np.unique(mask):
        if cls == 0:
            continue
        sel = mask == cls
        n, lab = cv2.connectedComponents(sel.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        lab_sel = lab[sel]
        labels[sel] = lab_sel + offset
        counts.append(np.bincount(lab_sel, minlength=n)[1:])
        if probs is not None:
            ch = 0 if probs.shape[0] == 1 else (int(cls) if background_channel else int(cls) - 1)
            sums.append(np.bincount(lab_sel, weights=probs[ch][sel].astype(np.float64), minlength=n)[1:])
        else:
            sums.append(np.zeros(n - 1))
        classes.append(np.full(n - 1, int(cls), np.int64))
        offset += n - 1
    return labels, np.concatenate(classes), np.concatenate(sums), np.concatenate(counts)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class PolygonAssembler:
    """Row strips of a class-id mask in -> finished polygons (pixel coordinates) out.

    ``push(mask, probs=None)`` returns the polygons finished by this strip as tuples
    ``(geometry, class_id, prob_sum, pixel_count)``; ``finish()`` returns the rest. The geometry
    is in pixel coordinates: a shapely Polygon when pieces were merged, else GDAL's GeoJSON-like
    dict (``shapely.geometry.shape`` turns it into one). The mean
    probability of a polygon is ``prob_sum / pixel_count`` over its pixels, taken from the
    channel of its class (channel 0 when C == 1; channel k for class k with a background
    channel, k - 1 without).
    """

    def __init__(self, height: int, width: int, *, background_channel: bool = True):
        self.height, self.width = int(height), int(width)
        self.background_channel = background_channel
        self.row0 = 0
        self._open: list[list] = []          # [geoms, class, prob_sum, count] touching the seam
        self._last_row: np.ndarray | None = None  # open-entry index + 1 per column (0 = none)

    def push(self, mask: np.ndarray, probs: np.ndarray | None = None) -> list[tuple]:
        # why: one pass over a strip's labelled regions that joins pieces across the seam; the union-find state is
        # local to it.
        from rasterio.features import shapes
        from rasterio.transform import Affine

        mask = np.asarray(mask)
        h = mask.shape[0]
        if mask.ndim != 2 or mask.shape[1] != self.width:
            raise ValueError(f"mask strip shape {mask.shape} does not fit (h, {self.width})")
        if self.row0 + h > self.height:
            raise ValueError(f"strip rows {self.row0}+{h} exceed height {self.height}")
        if probs is not None and (probs.ndim != 3 or probs.shape[1:] != mask.shape):
            raise ValueError(f"probs strip shape {probs.shape} does not fit (C, {h}, {self.width})")
        if h == 0:
            return []
        labels, classes, sums, counts = _label_strip(mask, probs, self.background_channel)
        n_open, n_new = len(self._open), len(classes) - 1
        pieces: list[list] = [[[], int(classes[i]), float(sums[i]), int(counts[i])] for i in range(1, n_new + 1)]
        if n_new:
            found = shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(0, self.row0))
            for geom, value in found:   # GeoJSON-like dicts; made shapely only when merged
                pieces[int(value) - 1][0].append(geom)
        entries = self._open + pieces          # open entries first, then this strip's labels
        uf = _UnionFind(len(entries))
        if self._last_row is not None and n_new:
            above, below = self._last_row, labels[0]
            touch = (above > 0) & (below > 0)
            if touch.any():
                pairs = np.unique(np.stack([above[touch] - 1, below[touch] - 1 + n_open], axis=1), axis=0)
                for a, b in pairs.tolist():
                    if entries[a][1] == entries[b][1]:   # same class across the seam = same object
                        uf.union(a, b)
        groups: dict[int, list] = {}
        for i, entry in enumerate(entries):
            root = uf.find(i)
            if root not in groups:
                groups[root] = [[], entry[1], 0.0, 0]
            g = groups[root]
            g[0].extend(entry[0])
            g[2] += entry[2]
            g[3] += entry[3]
        self.row0 += h
        more = self.row0 < self.height
        still_open: set[int] = set()
        if more and n_new:
            still_open = {uf.find(int(lab) - 1 + n_open) for lab in np.unique(labels[-1]) if lab}
        finished, self._open = [], []
        index_of: dict[int, int] = {}
        for root, g in groups.items():
            if root in still_open:
                index_of[root] = len(self._open)
                if len(g[0]) > 1:   # keep one merged geometry, not a growing list of pieces
                    g[0] = [_union(g[0])]
                self._open.append(g)
            else:
                finished.append((_union(g[0]), g[1], g[2], g[3]))
        if more and n_new:
            lut = np.zeros(n_new + 1, np.int64)
            for lab in range(1, n_new + 1):
                root = uf.find(lab - 1 + n_open)
                lut[lab] = index_of[root] + 1 if root in index_of else 0
            self._last_row = lut[labels[-1]]
        else:
            self._last_row = np.zeros(self.width, np.int64) if more else None
        return finished

    def finish(self) -> list[tuple]:
        if self.row0 != self.height:
            raise ValueError(f"got {self.row0} rows, image height is {self.height}")
        return []


def _as_shapely(geom):
    from shapely.geometry import shape

    return shape(geom) if isinstance(geom, dict) else geom


def _union(geoms: list):
    """One geometry from pieces that share edges; a lone piece is returned as it is (dict or shapely)."""
    from shapely import unary_union

    return geoms[0] if len(geoms) == 1 else unary_union([_as_shapely(g) for g in geoms])


def polygon_rings(geom, simplify: float = 0.0) -> list[list[np.ndarray]]:
    """The polygons of a GDAL dict or shapely geometry as lists of (n, 2) rings, in pixel units.

    An unmerged, unsimplified GDAL polygon is read straight from its dict: most polygons never
    touch a seam, and building shapely objects for them only to dump them again took most of the
    writer's time. ``simplify`` is a tolerance in pixels (topology kept, so the result stays valid).
    """
    if isinstance(geom, dict) and not simplify and geom["type"] == "Polygon":
        return [[np.asarray(ring, dtype=np.float64) for ring in geom["coordinates"]]]
    geom = _as_shapely(geom)
    if simplify > 0:
        geom = geom.simplify(simplify, preserve_topology=True)
    parts = [geom] if geom.geom_type == "Polygon" else list(getattr(geom, "geoms", []))
    return [[np.asarray(p.exterior.coords), *(np.asarray(r.coords) for r in p.interiors)]
            for p in parts if p.geom_type == "Polygon" and not p.is_empty]


def mask_to_polygons(mask: np.ndarray, transform=None, simplify: float = 0.0, min_area: float = 0) -> list[tuple]:
    """Polygons (shapely, holes kept) of every 4-connected class region: ``[(geometry, class_id)]``.

    Coordinates are map coordinates through ``transform`` (an ``affine.Affine``) when given, else
    pixel coordinates (x = column, y = row, corners on integers). ``simplify`` is a tolerance in
    pixels; regions with fewer than ``min_area`` pixels are dropped.
    """
    from shapely.geometry import shape

    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    assembler = PolygonAssembler(*mask.shape)
    found = [item for item in assembler.push(mask) + assembler.finish() if item[3] >= min_area]
    frame = CoordinateFrame("raster", transform=transform)
    geometries = frame.geometries([polygon_rings(g, simplify) for g, _, _, _ in found])
    return [(shape(geometry), cls) for geometry, (_, cls, _, _) in zip(geometries, found)]


class PolygonStripWriter(StripOutput):
    """GeoJSON FeatureCollection of the polygons of a mask arriving as row strips.

    ``write(mask, probs=None)`` (alias ``add``) takes (h, W) class-id strips in row order (and
    optionally the (C, h, W) probabilities for the mean probability); finished polygons are
    streamed into a temporary file which becomes ``path`` on a clean ``close``.

    Properties of each feature: ``class`` (id) and ``mean_prob`` (null without probs) for GIS
    users, and QuPath's ``objectType`` (``object_type``), ``classification`` (name from
    ``class_names``, fixed colour per class) and ``measurements`` (``segkit.io.writers.qupath``).
    ``geojson_crs`` picks the coordinate frame (``segkit.io.writers.geojson``: raster, pixel, wgs84).
    ``simplify`` in pixels, ``min_area`` in pixels.
    """

    def __init__(self, path, height: int, width: int, *, transform=None, crs=None, simplify: float = 0.0,
                 min_area: float = 0, background_channel: bool = True, overwrite: bool = False,
                 geojson_crs: str = "raster", object_type: str = "annotation", class_names=None):
        # why: keyword options of the GeoJSON file (frame, simplification, QuPath properties), each with a default.
        self._assembler = PolygonAssembler(height, width, background_channel=background_channel)
        self._with_probs: bool | None = None
        self._out = FeatureStream(path, transform=transform, crs=crs, simplify=simplify, min_area=min_area,
                                  overwrite=overwrite, geojson_crs=geojson_crs, object_type=object_type,
                                  class_names=class_names)

    @property
    def count(self) -> int:
        return self._out.count

    def write(self, mask: np.ndarray, probs: np.ndarray | None = None) -> None:
        if self._with_probs is None:
            self._with_probs = probs is not None
        elif self._with_probs != (probs is not None):
            raise ValueError("give probs with every strip or with none")
        self._out.write([(g, cls, psum, count, {}) for g, cls, psum, count in self._assembler.push(mask, probs)],
                        self._with_probs)

    add = write  # same verb as RleStripWriter.add

    def close(self) -> Path:
        return self._out.close(lambda: self._out.write(
            [(g, cls, psum, count, {}) for g, cls, psum, count in self._assembler.finish()], self._with_probs))

    def abort(self) -> None:
        self._out.abort()


class FeatureStream:
    """The GeoJSON file both polygon writers (this one and segkit.io.writers.instance_polygons's) stream into.

    ``write(found, with_probs)``: (geometry, class id, probability sum, pixel count, leading
    properties) per polygon; those under ``min_area`` pixels are dropped, the others simplified,
    put in the coordinate frame and written with ``class``, ``mean_prob`` and QuPath's properties.
    ``close(last)`` runs ``last`` (the writer's final polygons), ends the file and commits it
    atomically; any failure there, or ``abort()``, removes the temporary file.
    """

    def __init__(self, path, *, transform=None, crs=None, simplify: float = 0.0, min_area: float = 0,
                 overwrite: bool = False, geojson_crs: str = "raster", object_type: str = "annotation",
                 class_names=None):
        # why: keyword options of the GeoJSON file (frame, simplification, QuPath properties), each with a default.
        self.frame = CoordinateFrame(geojson_crs, crs=crs, transform=transform, source=str(path))
        self.simplify, self.min_area = float(simplify), min_area
        self.object_type, self.class_names = object_type, class_names
        qupath_properties(1, object_type=object_type)  # an unknown object type fails before any work
        self._atomic = AtomicFile(path, overwrite)
        try:  # a Ctrl-C while the writer opens (before any `with` can clean up) must not leave the temp file
            self._fh = open(self._atomic.tmp, "w")
            self._fh.write(json.dumps(self.frame.header())[:-1] + ', "features": [\n')
        except BaseException:
            self._atomic.discard()
            raise
        self.count = 0

    def write(self, found: list[tuple], with_probs: bool | None) -> None:
        found = [item for item in found if item[3] >= self.min_area]
        geometries = self.frame.geometries([polygon_rings(g, self.simplify) for g, _, _, _, _ in found])
        for geometry, (_, cls, psum, count, lead) in zip(geometries, found):
            mean_prob = round(psum / count, 6) if with_probs else None
            props = {**lead, "class": int(cls), "mean_prob": mean_prob}
            props.update(qupath_properties(cls, class_names=self.class_names, object_type=self.object_type,
                                           mean_prob=mean_prob, area_px=count, pixel_area=self.frame.pixel_area,
                                           area_unit=self.frame.area_unit))
            feature = {"type": "Feature", "properties": props, "geometry": geometry}
            self._fh.write((",\n" if self.count else "") + json.dumps(feature))
            self.count += 1

    def close(self, last=lambda: None) -> Path:
        try:
            last()
            self._fh.write("\n]}\n")
            self._fh.close()
        except BaseException:
            self.abort()
            raise
        return self._atomic.commit()

    def abort(self) -> None:
        self._fh.close()
        self._atomic.discard()
