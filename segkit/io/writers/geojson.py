"""Where GeoJSON coordinates go: pixels, the raster's CRS, or RFC 7946 longitude/latitude.

Polygons are built in pixel coordinates (x = column, y = row, origin at the top left corner of
the full-resolution image, pixel corners on integers). A :class:`CoordinateFrame` maps them,
a batch of rings at a time, to one of three frames (``--geojson-crs``):

- ``raster`` (default): the raster's CRS through its affine transform, with the pre-RFC 7946
  ``crs`` member that GDAL and QGIS read; pixel coordinates when the raster has no
  georeferencing (no ``crs`` member then);
- ``pixel``: pixel coordinates always, no ``crs`` member: what QuPath reads (it has no CRS);
- ``wgs84``: RFC 7946: reprojected to WGS 84 longitude/latitude (GDAL/PROJ through
  ``rasterio.warp.transform``), no ``crs`` member, 7 decimals (about 1 cm).

A file without a ``crs`` member is WGS 84 by RFC 7946, so GIS tools (GDAL's GeoJSON driver,
QGIS, geopandas) place a pixel-space file in degrees near longitude 0, latitude 0 and upside
down; docs/geotiff.md says so.

Every exterior ring is written counter-clockwise and every hole clockwise in the output frame
(RFC 7946 section 3.1.6), checked after the mapping because the y flip of a north-up transform
reverses the winding.
"""

from __future__ import annotations

import numpy as np

from segkit.ground.errors import SegkitError

__all__ = ["GEOJSON_CRS", "WGS84_DECIMALS", "CoordinateFrame", "geojson_crs", "map_area_unit"]

GEOJSON_CRS = ("raster", "pixel", "wgs84")
WGS84_DECIMALS = 7
_UNITS = {"metre": "m", "meter": "m", "foot": "ft", "us survey foot": "ftUS", "kilometre": "km"}


def geojson_crs(crs) -> dict:
    """The (pre-RFC 7946, still read by GDAL/QGIS) ``crs`` member for a CRS-like value."""
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_string()
    return {"type": "name", "properties": {"name": name}}


def map_area_unit(crs) -> str:
    """Short name of the CRS's linear unit for an area measurement: m, ft, deg, ... ('map units' if unknown)."""
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        return "deg"
    return _UNITS.get(str(crs.linear_units).lower(), "map units")


def _signed_area2(xy: np.ndarray) -> float:
    """Twice the signed area of a closed ring (shoelace): > 0 when counter-clockwise."""
    return float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))


class CoordinateFrame:
    """Maps pixel-coordinate polygons to the output frame of a GeoJSON file (see the module doc).

    ``crs``/``transform`` are the raster's (None when it has none); ``source`` names the image in
    errors. ``pixel_area`` (map units² per pixel) and ``area_unit`` are set whenever the raster
    is georeferenced, whatever the output frame, for area measurements in map units.
    """

    def __init__(self, mode: str = "raster", *, crs=None, transform=None, source: str = "image"):
        if mode not in GEOJSON_CRS:
            raise SegkitError(f"geojson crs {mode!r}: expected one of {', '.join(GEOJSON_CRS)}")
        georeferenced = crs is not None and transform is not None
        if mode == "wgs84" and not georeferenced:
            raise SegkitError(f"{source}: --geojson-crs wgs84 needs a georeferenced image (this one has no CRS)")
        self.mode = mode
        self.pixel_area = abs(transform.a * transform.e - transform.b * transform.d) if georeferenced else None
        self.area_unit = map_area_unit(crs) if georeferenced else None
        self.transform = transform if mode in ("raster", "wgs84") else None
        self.crs = crs if mode == "raster" else None  # the crs member written in the header
        self._source_crs = crs if mode == "wgs84" else None
        self.decimals = WGS84_DECIMALS if mode == "wgs84" else None

    def header(self) -> dict:
        """The FeatureCollection's members other than ``features``."""
        header = {"type": "FeatureCollection"}
        if self.crs is not None:
            header["crs"] = geojson_crs(self.crs)
        return header

    def map_xy(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) pixel x/y -> (N, 2) output coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.transform is not None:
            t = self.transform
            xy = np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f])
        if self._source_crs is not None and len(xy):
            from rasterio.warp import transform as reproject

            lon, lat = reproject(self._source_crs, "EPSG:4326", xy[:, 0], xy[:, 1])
            xy = np.column_stack([np.asarray(lon), np.asarray(lat)])
        return xy

    def geometries(self, polygons_per_feature: list[list[list[np.ndarray]]]) -> list[dict]:
        """GeoJSON geometries of many features at once (one reprojection call for all of them).

        Each feature is a list of polygons, each polygon a list of closed rings (exterior first)
        as (n, 2) pixel-coordinate arrays. One polygon -> Polygon, several -> MultiPolygon.
        """
        rings = [ring for feature in polygons_per_feature for polygon in feature for ring in polygon]
        if not rings:
            return []
        mapped = self.map_xy(np.concatenate(rings))
        bounds = np.cumsum([0] + [len(r) for r in rings])
        out, k = [], 0
        for feature in polygons_per_feature:
            polygons = []
            for polygon in feature:
                coords = []
                for i in range(len(polygon)):
                    xy = mapped[bounds[k]:bounds[k + 1]]
                    k += 1
                    if (_signed_area2(xy) < 0) == (i == 0):  # exterior counter-clockwise, holes clockwise
                        xy = xy[::-1]
                    if self.decimals is not None:
                        xy = np.round(xy, self.decimals)
                    coords.append(xy.tolist())
                polygons.append(coords)
            if len(polygons) == 1:
                out.append({"type": "Polygon", "coordinates": polygons[0]})
            else:
                out.append({"type": "MultiPolygon", "coordinates": polygons})
        return out
