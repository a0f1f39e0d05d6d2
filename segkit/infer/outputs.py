"""The per-image files of `segkit infer`, opened for the viewers they land in.

- ``--mask``: class ids (uint8) as a tiled GeoTIFF with internal overviews (nearest), a colour
  table in the classes' fixed colours (background transparent), ``nodata`` and the class names
  as a tag; or, for a ``*.ome.tif`` path, a pyramidal OME-TIFF (what QuPath recommends for large
  label images).
- ``--probs``: probabilities as uint8 0..255 with internal overviews (average); the scale
  (1/255) is in the file as GDAL per-band scale/offset, band descriptions and an OME
  description, so tools read probabilities rather than bytes.
- ``--polygons``: GeoJSON with QuPath's properties, in the frame ``geojson_crs`` names.

:func:`open_image_writers` returns ``(writer, write)`` pairs; ``write(writer, mask, probs)``
feeds one finished strip.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

from segkit.ground.errors import SegkitError
from segkit.io.classes import class_colour, class_name
from segkit.io.ome import OmeTiffStripWriter, is_ome_path
from segkit.io.vector import PolygonStripWriter
from segkit.io.writers import TiffStripWriter

__all__ = ["WriterOptions", "open_image_writers", "mask_class_ids", "check_georeferenced"]

PROBABILITY_SCALE = 1 / 255


@dataclass
class WriterOptions:
    """How the files are written (infer.* output keys and data.class_names)."""

    class_names: Optional[list] = None  # names by class id, 0 = background
    geojson_crs: str = "raster"  # raster | pixel | wgs84
    object_type: str = "annotation"  # QuPath objectType of the polygons
    simplify: float = 0.0  # polygon simplification tolerance, pixels
    min_polygon_area: int = 0  # polygons with fewer pixels are not written
    overviews: bool = True  # internal overviews in mask/probs TIFFs
    mask_nodata: Optional[int] = 0  # nodata value declared in the mask TIFF (None: none)
    rle_header: tuple = ("id", "rle")  # the two column names of the RLE CSV
    rle_empty: str = ""  # RLE cell of an image without foreground


def mask_class_ids(classes: int) -> range:
    """Values a mask can hold: 0..1 for a binary model (1 output), else 0..classes-1."""
    return range(max(2, int(classes)))


def check_georeferenced(raster, options: WriterOptions) -> None:
    """--geojson-crs wgs84 needs a CRS: checked for every image before any prediction."""
    if options.geojson_crs == "wgs84" and (raster.crs is None or raster.transform is None):
        raise SegkitError(f"{raster.path}: --geojson-crs wgs84 needs a georeferenced image (this one has no CRS)")


def _tiff(path, height, width, channels, *, resampling: Optional[str], channel_names: list, description: str,
          overwrite: bool, **options):
    if is_ome_path(path):
        return OmeTiffStripWriter(path, height, width, channels, "uint8", overwrite=overwrite,
                                  overviews=resampling or "nearest", channel_names=channel_names,
                                  description=description, **options)
    return TiffStripWriter(path, height, width, channels, "uint8", overwrite=overwrite, overviews=resampling,
                           descriptions=channel_names, **options)


def open_image_writers(stack: contextlib.ExitStack, paths: dict, raster, classes: int, options: WriterOptions,
                       overwrite: bool) -> list:
    """Writers for the ``mask``, ``probs`` and ``polygons`` paths given (None: not written)."""
    height, width = raster.height, raster.width
    geo = {"crs": raster.crs, "transform": raster.transform}
    names = options.class_names
    ids = mask_class_ids(classes)
    writers = []
    if paths.get("mask"):
        colormap = {0: (0, 0, 0, 0), **{k: (*class_colour(k), 255) for k in ids if k}}
        writer = _tiff(paths["mask"], height, width, 1, resampling="nearest" if options.overviews else None,
                       channel_names=["class id"], description="class ids: " + ", ".join(
                           f"{k} {class_name(k, names)}" for k in ids), overwrite=overwrite,
                       colormap=colormap, nodata=options.mask_nodata,
                       tags={"class_names": ",".join(class_name(k, names) for k in ids)}, **geo)
        writers.append((stack.enter_context(writer), lambda w, mask, probs: w.write(mask)))
    if paths.get("probs"):
        channel_ids = [1] if classes == 1 else list(ids)
        labels = [f"probability of {class_name(k, names)}" for k in channel_ids]
        writer = _tiff(paths["probs"], height, width, len(channel_ids),
                       resampling="average" if options.overviews else None, channel_names=labels,
                       description="probabilities scaled to 0..255: probability = value / 255",
                       overwrite=overwrite, scales=[PROBABILITY_SCALE] * len(labels), offsets=[0.0] * len(labels),
                       tags={"probability_scale": "value / 255"}, **geo)
        writers.append((stack.enter_context(writer), lambda w, mask, probs: w.write(probs)))
    if paths.get("polygons"):
        writer = PolygonStripWriter(paths["polygons"], height, width, overwrite=overwrite, simplify=options.simplify,
                                    min_area=options.min_polygon_area, geojson_crs=options.geojson_crs,
                                    object_type=options.object_type, class_names=names, **geo)
        writers.append((stack.enter_context(writer), lambda w, mask, probs: w.write(mask, probs)))
    return writers
