"""Label sources: read(window) -> HW uint8 class ids without building the full-size mask.

    labels = open_labels("train.csv", raster)          # RLE row whose id is the image stem
    labels = open_labels("slide.geojson", raster, class_property="classification.name",
                         class_map={"glomerulus": 1})
    labels = open_labels("masks/slide.png", raster, class_map={255: 1})

Three kinds, chosen by the spec's suffix: a mask raster (any format segkit.io.images.raster opens), an RLE
CSV (`id,<rle>`: runs kept as per-column intervals, see _runs.py) or polygons in GeoJSON/JSON
(rasterized per window, holes respected; pixel or CRS coordinates, see _polygons.py).
Windows past the border are padded like the image (reflect when the image reflects, else 0).
Resampling to out_size is nearest, sampling output pixel centres (cv2.INTER_NEAREST_EXACT), so
all three kinds give identical windows at any size. Thumbnails keep a block's largest class id so
small objects survive in the low-resolution grid the sampler uses for foreground windows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io.labels.polygons import PolygonLabels
from segkit.io.labels.rle_rows import rle_fields
from segkit.io.labels.rle_runs import LineIntervals
from segkit.io.images.window import block_edges, resize_nearest, thumb_shape
from segkit.io.labels.base import LabelSource
from segkit.io.images.raster import Raster, open_raster
from segkit.io.rle import parse_rle, rle_runs

RLE_SUFFIXES = {".csv"}
POLYGON_SUFFIXES = {".geojson", ".json"}


def open_labels(spec, image: Raster, *, image_id: str | None = None, rle_order: str = "F",
                class_map: dict | None = None, class_property: str | None = None,
                coords: str = "auto") -> LabelSource:
    """Label source for `image`. coords (polygons only): "auto" | "pixel" | "crs"."""
    return open_by_suffix(
        spec, rle=lambda path: RleLabels(path, image, image_id=image_id, order=rle_order, class_map=class_map),
        polygons=lambda path: PolygonLabels(path, image, class_map=class_map, class_property=class_property,
                                            coords=coords),
        raster=lambda path: RasterLabels(path, image, class_map=class_map))


def open_by_suffix(spec, *, rle, polygons, raster):
    """The label file ``spec`` opened by the opener its suffix names: ``rle`` for an RLE CSV,
    ``polygons`` for GeoJSON/JSON, else ``raster`` (each called with the path); class labels
    (open_labels) and instance labels (segkit.io.labels.instances) are told apart the same way."""
    path = Path(spec)
    if not path.is_file():
        raise SegkitError(f"{path}: label file not found")
    suffix = path.suffix.lower()
    opener = rle if suffix in RLE_SUFFIXES else polygons if suffix in POLYGON_SUFFIXES else raster
    return opener(path)


def _class_pairs(class_map: dict | None, path: Path) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Sorted label values, their class ids and whether the values are RGB colours, or None.

    A colour key is (r, g, b) or "r,g,b" and is packed as r << 16 | g << 8 | b."""
    if class_map is None:
        return None
    pairs, colours = [], set()
    for key, value in class_map.items():
        colour = isinstance(key, (tuple, list)) or (isinstance(key, str) and "," in key)
        try:
            parts = [int(v) for v in (key.split(",") if isinstance(key, str) else key)] if colour else None
            k = (parts[0] << 16 | parts[1] << 8 | parts[2]) if colour and len(parts) == 3 else int(key)
            v = int(value)
        except (TypeError, ValueError):
            raise SegkitError(f"{path}: class_map {key!r}: {value!r} must map label values (or r,g,b colours) "
                              "to class ids") from None
        if not 0 <= v <= 255:
            raise SegkitError(f"{path}: class_map {key!r}: class id {v} must be within 0..255")
        pairs.append((k, v))
        colours.add(colour)
    if len(colours) > 1:
        raise SegkitError(f"{path}: class_map mixes label values and r,g,b colours")
    pairs.sort()
    keys, vals = np.array([k for k, _ in pairs], np.int64), np.array([v for _, v in pairs], np.uint8)
    return keys, vals, colours == {True}


class RasterLabels(LabelSource):
    """A mask raster with the image's size; values of the first channel (or r,g,b colours, when
    class_map keys are colours) mapped through class_map; unlisted values read as 0.

    Without class_map a mask whose values are only 0 and 255 (a common way to save binary
    masks) reads as 0/1; any other mask passes its values through.
    """

    def __init__(self, path, image: Raster, *, class_map: dict | None = None):
        self._init_geometry(path, image)
        self.raster = open_raster(path, pad_mode="constant", pad_value=0)
        problem = None
        if (self.raster.height, self.raster.width) != (image.height, image.width):
            problem = (f"label size {self.raster.height}x{self.raster.width} differs from image "
                       f"{image.path} size {image.height}x{image.width}")
        elif self.raster.dtype.kind not in "uib":
            problem = f"label raster has dtype {self.raster.dtype}; expected integers"
        if problem:  # closed now: a refused label must not hold its file until the garbage collector runs
            self.raster.close()
            raise SegkitError(f"{self.path}: {problem}")
        self.pairs = _class_pairs(class_map, self.path)
        self.colour = bool(self.pairs and self.pairs[2])
        if self.colour and self.raster.channels < 3:
            raise SegkitError(f"{self.path}: class_map has r,g,b colours but the mask has {self.raster.channels} "
                              "channel(s)")
        self.lut = None  # uint8 labels: a 256-entry table
        if self.pairs is None:
            values = np.unique(self.raster.thumbnail(512, nearest=True)[0][..., 0])
            if values.size and set(values.tolist()) <= {0, 255} and values.max() == 255:
                self.pairs = np.array([0, 255]), np.array([0, 1], np.uint8), False
        if self.pairs is not None and self.raster.dtype.itemsize == 1 and not self.colour:
            keys, vals, _ = self.pairs
            self.lut = np.zeros(256, np.uint8)
            ok = (keys >= 0) & (keys <= 255)
            self.lut[keys[ok]] = vals[ok]

    def _read_inside(self, r0, r1, c0, c1):
        raw = self.raster.read(Window(r0, c0, r1 - r0, c1 - c0))
        if self.colour:
            rgb = raw[..., :3].astype(np.int64)
            raw = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        else:
            raw = raw[..., 0]
        if self.lut is not None:
            return self.lut[raw.astype(np.uint8, copy=False)]
        if self.pairs is not None:  # wide values or colours: look each up among the sorted keys
            keys, vals, _ = self.pairs
            idx = np.clip(np.searchsorted(keys, raw), 0, keys.size - 1)
            return np.where(keys[idx] == raw, vals[idx], 0).astype(np.uint8)
        if raw.dtype != np.uint8:
            if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
                raise SegkitError(f"{self.path}: label values outside 0..255; give a class_map")
            raw = raw.astype(np.uint8)
        return raw


class RleLabels(LabelSource):
    """The RLE row(s) of a CSV whose id equals image_id (default: the image file's stem or name).

    Several rows with the same id (one per object, as in some competitions) are merged; an empty
    field means no foreground. Foreground reads as class_map.get(1, 1).
    """

    def __init__(self, path, image: Raster, *, image_id: str | None = None, order: str = "F",
                 class_map: dict | None = None):
        self._init_geometry(path, image)
        if order not in ("F", "C"):
            raise SegkitError(f"{self.path}: rle order {order!r}: expected 'F' (column-major) or 'C' (row-major)")
        self.order = order
        self.image_id = image_id if image_id is not None else _stem(image.path)
        # without an explicit id, a row naming the image file (slide.tiff) matches too
        self._ids = {self.image_id} if image_id is not None else {self.image_id, image.path.name}
        self.value = int((class_map or {}).get(1, (class_map or {}).get("1", 1)))
        starts, ends = self._load()
        lines, line_len = (self.width, self.height) if order == "F" else (self.height, self.width)
        self.runs = LineIntervals(starts, ends, lines, line_len)

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        rows = rle_fields(self.path, self._ids)
        found, values = bool(rows), []
        for line_no, text in rows:
            try:
                values.append(parse_rle(text))
            except SegkitError as exc:
                raise SegkitError(f"{self.path}: line {line_no} (id {self.image_id}): {exc}") from None
        if not found:
            raise SegkitError(f"{self.path}: no row with id {self.image_id!r} (image {self.image_path})")
        pairs = np.concatenate(values) if values else np.zeros(0, np.int64)
        try:
            starts, lengths = rle_runs(pairs, self.height, self.width)
        except SegkitError as exc:
            raise SegkitError(f"{self.path}: id {self.image_id} (image {self.image_path}): {exc}") from None
        return starts, starts + lengths

    def read(self, window: Window, out_size: tuple[int, int] | None = None) -> np.ndarray:
        r0, c0, h, w = (int(v) for v in window)
        if self.order == "F" and r0 >= 0 and c0 >= 0 and r0 + h <= self.height and c0 + w <= self.width:
            # resize the column-major raster before transposing it: transposes the small array
            cols = self.runs.rasterize(c0, c0 + w, r0, r0 + h)
            if out_size is not None:
                cols = resize_nearest(cols, (int(out_size[1]), int(out_size[0])))
            mask = np.ascontiguousarray(cols.T)
            return mask * np.uint8(self.value) if self.value != 1 else mask
        return super().read(window, out_size)

    def _read_inside(self, r0, r1, c0, c1):
        if self.order == "F":
            mask = self.runs.rasterize(c0, c1, r0, r1).T
        else:
            mask = self.runs.rasterize(r0, r1, c0, c1)
        mask = np.ascontiguousarray(mask)
        return mask * np.uint8(self.value) if self.value != 1 else mask

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        oh, ow = thumb_shape(self.height, self.width, max_side)
        rows, cols = block_edges(self.height, oh), block_edges(self.width, ow)
        if self.order == "F":
            hit = self.runs.block_any(cols, rows).T
        else:
            hit = self.runs.block_any(rows, cols)
        return hit.astype(np.uint8) * np.uint8(self.value), max(self.height / oh, self.width / ow)


def _stem(path: Path) -> str:
    """File name without its suffixes that belong to the format (slide.ome.tif -> slide)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
