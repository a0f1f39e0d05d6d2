"""`segkit infer` for runs with instance targets: probabilities -> watershed objects -> object outputs.

The predictor's (row0, probs) strips (body, border, contact) go through the streaming watershed
(segkit.post.watershed.StripWatershed) and every output consumes the finished object strips:

- ``--instances out.tif``: tiled uint32 instance-id TIFF (0 = background), georeferenced when the
  input is, with nearest overviews;
- ``--polygons``: one GeoJSON feature per object (segkit.io.writers.instance_polygons);
- ``--rle``: with ``infer.rle_per_object`` one row per object (Data Science Bowl format, via
  segkit.io.writers.instance_rle), else one row per image of the union of the objects;
- ``--mask`` / ``--probs``: the objects' union and the body probability, as for a binary run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.infer.outputs import open_image_writers
from segkit.io.writers.instance_rle import ObjectRleEncoder
from segkit.io.writers.instance_polygons import InstancePolygonWriter
from segkit.io.images.raster import open_raster
from segkit.io.rle import RleStripEncoder
from segkit.io.writers.strips import TiffStripWriter
from segkit.post.watershed import StripWatershed

__all__ = ["check_instance_outputs", "infer_objects"]


def check_instance_outputs(targets, instances: Optional[str], rle_per_object: bool, run_name: str) -> None:
    """--instances and infer.rle_per_object need a run with instance targets (one-line error)."""
    if targets:
        return
    for given, what in ((instances, f"--instances {instances}"), (rle_per_object, "infer.rle_per_object")):
        if given:
            raise SegkitError(f"{what}: run {run_name} has no instance targets (train it with data.targets: "
                              "instances)")


def infer_objects(strips, image_path: Path, paths: dict, targets, settings, overwrite: bool
                  ) -> tuple[Optional[object], list[Path]]:
    """Objects of one image's (row0, probs) ``strips`` into its files.

    ``paths``: {"instances", "polygons", "mask", "probs": path or None, "rle": True when a CSV is
    written}; ``targets``: the run's target names; ``settings``: segkit.infer.run.Settings.
    Returns (the image's RLE: a list of per-object RLEs with infer.rle_per_object, else one RLE of
    the union, None without --rle; the files written).
    """
    raster = open_raster(image_path)
    height, width = raster.height, raster.width
    objects = StripWatershed(height, width, targets, settings.seeds)(strips)
    writing = settings.writing
    geo = {"crs": raster.crs, "transform": raster.transform}
    with contextlib.ExitStack() as stack:
        # the --mask/--probs writers take (mask, probs) strips; the object writers (ids, body)
        masks = open_image_writers(stack, {"mask": paths.get("mask"), "probs": paths.get("probs")}, raster, 1,
                                   writing, overwrite)
        by_object = []
        if paths.get("instances"):
            tiff = TiffStripWriter(paths["instances"], height, width, 1, "uint32", overwrite=overwrite,
                                   overviews="nearest" if writing.overviews else None, nodata=0,
                                   descriptions=["object id"], tags={"content": "instance ids, 0 = background"},
                                   **geo)
            by_object.append(lambda ids, body, w=stack.enter_context(tiff): w.write(ids.astype(np.uint32)))
        if paths.get("polygons"):
            vector = InstancePolygonWriter(paths["polygons"], height, width, simplify=writing.simplify,
                                           min_area=writing.min_polygon_area, overwrite=overwrite,
                                           geojson_crs=writing.geojson_crs, object_type=writing.object_type,
                                           class_names=writing.class_names, **geo)
            by_object.append(lambda ids, body, w=stack.enter_context(vector): w.write(ids, body))
        rows, encoder = [], None
        if paths.get("rle") and settings.rle_per_object:
            encoder = ObjectRleEncoder(height, width, order=settings.rle_order)
            by_object.append(lambda ids, body: rows.extend(text for _, text in encoder.add(ids)))
        elif paths.get("rle"):
            encoder = RleStripEncoder(height, width, order=settings.rle_order)
            by_object.append(lambda ids, body: encoder.add(ids != 0))
        for _, ids, body in objects:
            for write in by_object:
                write(ids, body)
            if masks:
                mask, probs = (ids != 0).astype(np.uint8), body[None]
                for writer, write in masks:
                    write(writer, mask, probs)
    rle = None
    if encoder is not None:
        rle = rows if settings.rle_per_object else encoder.finish()
    return rle, [p for key, p in paths.items() if key != "rle" and p]
