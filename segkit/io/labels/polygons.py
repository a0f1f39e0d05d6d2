"""Polygon labels (GeoJSON / HuBMAP-style JSON) rasterized per window.

Coordinates are pixel coordinates (x = column, y = row, pixel (r, c) covering [c, c+1) x [r, r+1))
or coordinates in a CRS mapped through the image's transform. coords="auto" decides:
- the file names a CRS ("crs" member) -> CRS coordinates, reprojected to the image's CRS;
- the image is georeferenced and the coordinates fall inside its bounds -> the image's CRS;
- the image is georeferenced and the coordinates look like lon/lat -> EPSG:4326 (RFC 7946);
- otherwise pixel coordinates.
A pixel belongs to a polygon when its centre does (rasterio.features.rasterize); holes are
respected; later features paint over earlier ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segkit.ground.errors import SegkitError, warn_once
from segkit.ground.geometry import Window
from segkit.io.labels.base import LabelSource
from segkit.io.limits import check_vector_file
from segkit.io.images.raster import Raster

POLYGONAL = ("Polygon", "MultiPolygon")


class PolygonLabels(LabelSource):
    def __init__(self, path, image: Raster, *, class_map: dict | None = None,
                 class_property: str | None = None, coords: str = "auto"):
        self._init_geometry(path, image)
        if coords not in ("auto", "pixel", "crs"):
            raise SegkitError(f"{self.path}: coords {coords!r}: expected auto, pixel or crs")
        try:
            check_vector_file(path)
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SegkitError(f"{self.path}: not valid JSON ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            raise SegkitError(f"{self.path}: JSON nested too deeply to be a GeoJSON") from None
        features = _features(data, self.path)
        geoms, values = [], []
        for i, feature in enumerate(features):
            geom = feature.get("geometry") if feature.get("type") == "Feature" or "geometry" in feature else feature
            if not geom or geom.get("type") not in POLYGONAL:
                continue  # points/lines carry no area
            value = _class_value(feature.get("properties") or {}, class_property, class_map, self.path, i)
            if value is not None:
                geoms.append(geom)
                values.append(value)
        self.geoms = self._to_pixels(geoms, _file_crs(data), coords, image)
        self.values = values
        if self.geoms:
            from shapely.geometry import mapping, shape

            shapes = []
            for i, g in enumerate(self.geoms):
                if not np.isfinite(_all_coords([g])).all():  # GEOS would fail later with its own text
                    raise SegkitError(f"{self.path}: polygon {i} has coordinates that are not finite numbers")
                try:
                    shapes.append(shape(g))
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    raise SegkitError(f"{self.path}: polygon {i} is malformed ({exc})") from None
                self.geoms[i] = mapping(shapes[-1])  # rings closed as shapely reads them (rasterio skips open ones)
            shapes = self._repair(shapes)
            self.bounds = np.array([s.bounds for s in shapes], dtype=np.float64).reshape(-1, 4)
            inside = ((self.bounds[:, 2] > 0) & (self.bounds[:, 0] < self.width)
                      & (self.bounds[:, 3] > 0) & (self.bounds[:, 1] < self.height))
            if not inside.any():
                x0, y0 = self.bounds[:, 0].min(), self.bounds[:, 1].min()
                x1, y1 = self.bounds[:, 2].max(), self.bounds[:, 3].max()
                raise SegkitError(
                    f"{self.path}: all {len(shapes)} polygons lie outside image {self.image_path} "
                    f"({self.width}x{self.height} px; polygons span x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g} "
                    "in pixels) - wrong coordinates or CRS?")
        else:
            self.bounds = np.zeros((0, 4))
            warn_once(f"{self.path}: no polygons; image {self.image_path} is all background")

    def _repair(self, shapes: list) -> list:
        """Self-intersecting (invalid) polygons repaired with shapely's make_valid (polygonal parts kept):
        rasterizing a bow-tie as drawn fills or drops parts depending on the winding."""
        from shapely.geometry import mapping
        from shapely.validation import make_valid

        repaired = 0
        for i, geom in enumerate(shapes):
            if geom.is_valid:
                continue
            fixed = make_valid(geom)
            if fixed.geom_type == "GeometryCollection":
                from shapely.geometry import MultiPolygon

                fixed = MultiPolygon([p for part in fixed.geoms if part.geom_type in POLYGONAL
                                      for p in getattr(part, "geoms", [part])])
            shapes[i], self.geoms[i] = fixed, mapping(fixed)
            repaired += 1
        if repaired:
            warn_once(f"{self.path}: {repaired} invalid (self-intersecting) polygon(s) repaired with make_valid")
        return shapes

    def _to_pixels(self, geoms: list, file_crs, coords: str, image: Raster) -> list:
        if not geoms:
            return []
        if coords == "auto":
            coords, file_crs = _guess_coords(geoms, file_crs, image)
        if coords == "pixel":
            return geoms
        if image.transform is None:
            raise SegkitError(f"{self.path}: polygons are in CRS coordinates ({file_crs or 'crs'}) but image "
                              f"{self.image_path} has no CRS/transform; use pixel coordinates")
        if file_crs is not None and image.crs is not None:
            from rasterio.crs import CRS
            from rasterio.errors import RasterioError
            from rasterio.warp import transform_geom

            try:
                src = CRS.from_user_input(file_crs)
                if src != image.crs:
                    geoms = [transform_geom(src, image.crs, g) for g in geoms]
            except (RasterioError, ValueError, TypeError) as exc:
                raise SegkitError(f"{self.path}: cannot transform polygons from CRS {file_crs!r} to the "
                                  f"image's CRS ({str(exc).splitlines()[0]})") from None
        inverse = ~image.transform
        return [_map_coords(g, inverse) for g in geoms]

    def read(self, window: Window, out_size: tuple[int, int] | None = None) -> np.ndarray:
        r0, c0, h, w = (int(v) for v in window)
        if out_size is not None and r0 >= 0 and c0 >= 0 and r0 + h <= self.height and c0 + w <= self.width:
            oh, ow = (int(v) for v in out_size)
            if h % oh == 0 and w % ow == 0:
                # integer downscale: rasterize straight at out_size, each output pixel centre placed
                # on the centre of the source pixel a nearest resize picks (s*i + s//2), so the
                # result equals read(window) resized, at 1/s^2 of the work
                sy, sx = h // oh, w // ow
                return self._rasterize(r0 + sy // 2 + 0.5 - sy / 2, None, c0 + sx // 2 + 0.5 - sx / 2, None,
                                       (oh, ow), all_touched=False, scale=(sy, sx))
        return super().read(window, out_size)

    def _read_inside(self, r0, r1, c0, c1):
        return self._rasterize(r0, r1, c0, c1, (r1 - r0, c1 - c0), all_touched=False)

    def _rasterize(self, r0, r1, c0, c1, out_shape, *, all_touched: bool, scale=None) -> np.ndarray:
        """Rasterize at out_shape the area from (r0, c0) on, pixel size scale (default: to r1, c1)."""
        if scale is None:
            scale = ((r1 - r0) / out_shape[0], (c1 - c0) / out_shape[1])
        r1, c1 = r0 + scale[0] * out_shape[0], c0 + scale[1] * out_shape[1]
        b = self.bounds
        hit = np.flatnonzero((b[:, 2] > c0) & (b[:, 0] < c1) & (b[:, 3] > r0) & (b[:, 1] < r1))
        if hit.size == 0:
            return np.zeros(out_shape, np.uint8)
        from affine import Affine
        from rasterio.features import rasterize

        transform = Affine.translation(c0, r0) @ Affine.scale(scale[1], scale[0])
        return rasterize(((self.geoms[i], self.values[i]) for i in hit), out_shape=out_shape,
                         transform=transform, fill=0, dtype=np.uint8, all_touched=all_touched)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        from segkit.io.images.window import thumb_shape

        oh, ow = thumb_shape(self.height, self.width, max_side)
        # all_touched: an object smaller than a thumbnail pixel still marks it (like a block max)
        thumb = self._rasterize(0, self.height, 0, self.width, (oh, ow), all_touched=True)
        return thumb, max(self.height / oh, self.width / ow)


def _features(data, path: Path) -> list:
    if isinstance(data, list):
        return [f for f in data if isinstance(f, dict)]
    if isinstance(data, dict):
        if data.get("type") == "FeatureCollection" or "features" in data:
            return [f for f in data.get("features") or [] if isinstance(f, dict)]
        if data.get("type") == "Feature" or data.get("type") in POLYGONAL + ("GeometryCollection",):
            if data.get("type") == "GeometryCollection":
                return list(data.get("geometries") or [])
            return [data]
    raise SegkitError(f"{path}: expected a GeoJSON FeatureCollection, Feature, geometry or a list of features")


def _class_value(props: dict, class_property, class_map, path: Path, index: int):
    """Class id of a feature; None skips it (its class is not in class_map)."""
    if class_property is None:
        raw = 1
    else:
        raw = props
        for part in class_property.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else None
        if raw is None:
            raise SegkitError(f"{path}: feature {index} has no property {class_property!r}")
    if class_map is not None:
        key = raw if raw in class_map else str(raw)
        if key not in class_map:
            if class_property is None:
                return 1  # no property to map: class_map is for other label kinds
            return None  # classes not listed are background by choice
        raw = class_map[key]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SegkitError(f"{path}: feature {index}: class {raw!r} is not an integer; give a class_map") from None
    if not 0 <= value <= 255:
        raise SegkitError(f"{path}: feature {index}: class {value} outside 0..255")
    return value


def _file_crs(data):
    if isinstance(data, dict):
        crs = data.get("crs")
        if isinstance(crs, dict):
            return (crs.get("properties") or {}).get("name")
        if isinstance(crs, str):
            return crs
    return None


def _all_coords(geoms: list) -> np.ndarray:
    """Every (x, y) of the geometries as an (N, 2) float array; nesting is walked with a stack
    (no recursion limit), anything but numbers and lists makes NaN (refused by the caller)."""
    pts = []
    stack = [g.get("coordinates") or [] for g in reversed(geoms)]
    while stack:
        c = stack.pop()
        if not isinstance(c, list):
            pts.append((np.nan, np.nan))
        elif c and isinstance(c[0], (int, float)):
            pts.append(c[:2] if len(c) >= 2 and all(isinstance(v, (int, float)) for v in c[:2]) else (np.nan, np.nan))
        else:
            stack.extend(reversed(c))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def _guess_coords(geoms: list, file_crs, image: Raster):
    if file_crs is not None:
        return "crs", file_crs
    if image.crs is None or image.transform is None:
        return "pixel", None
    from rasterio.transform import array_bounds

    pts = _all_coords(geoms)
    west, south, east, north = array_bounds(image.height, image.width, image.transform)
    inside = ((pts[:, 0] >= west) & (pts[:, 0] <= east) & (pts[:, 1] >= south) & (pts[:, 1] <= north)).mean()
    if inside > 0.5:
        return "crs", None  # already in the image's CRS
    if (np.abs(pts[:, 0]) <= 180).all() and (np.abs(pts[:, 1]) <= 90).all() and not image.crs.is_geographic:
        return "crs", "EPSG:4326"
    return "pixel", None


def _map_coords(geom: dict, affine) -> dict:
    a, b, c, d, e, f = affine.a, affine.b, affine.c, affine.d, affine.e, affine.f

    def walk(cs):
        if cs and isinstance(cs[0], (int, float)):
            x, y = cs[0], cs[1]
            return [a * x + b * y + c, d * x + e * y + f]
        return [walk(x) for x in cs]

    return {"type": geom["type"], "coordinates": walk(geom["coordinates"])}
