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

from segkit.ground.config import Config
from segkit.ground.errors import SegkitError
from segkit.ground.targets import parse_targets
from segkit.io.classes import class_colour, class_name
from segkit.io.ome import OmeTiffStripWriter, is_ome_path
from segkit.io.vector import PolygonStripWriter
from segkit.io.writers import TiffStripWriter

__all__ = ["WriterOptions", "open_image_writers", "mask_class_ids", "check_georeferenced"]

PROBABILITY_SCALE = 1 / 255


@dataclass(frozen=True)
class WriterOptions:
    """How the files are written: the infer.* output keys (their help is in ground/settings.py) and
    data.class_names, resolved by :meth:`from_config`."""

    class_names: Optional[list]
    geojson_crs: str
    object_type: str  # annotation | detection (infer.object_type "auto" resolved)
    simplify: float
    min_polygon_area: int
    overviews: bool
    mask_nodata: Optional[int]
    rle_header: tuple  # the two column names of the RLE CSV
    rle_empty: str

    @classmethod
    def from_config(cls, config: Config) -> "WriterOptions":
        i = config.infer
        object_type = i.object_type
        if object_type == "auto":  # objects of instance runs (nuclei, cells) are QuPath detections
            object_type = "detection" if parse_targets(config.data.targets) else "annotation"
        return cls(class_names=config.data.class_names, geojson_crs=i.geojson_crs, object_type=object_type,
                   simplify=i.simplify, min_polygon_area=i.min_polygon_area, overviews=i.overviews,
                   mask_nodata=i.mask_nodata, rle_header=tuple(name.strip() for name in i.rle_header.split(",")),
                   rle_empty=i.rle_empty)


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
