"""Instance label sources: each object its own integer id, read per window.

    labels = open_instances("masks/slide_ids.tif", raster)          # instance-id raster
    labels = open_instances("cells.geojson", raster)                # each polygon one object
    labels = open_instances("stage1_train_labels.csv", raster)      # DSB: ImageId,EncodedPixels per object
    ids = labels.read_instances(Window(0, 0, 256, 256))             # (h, w) int32, 0 = background

They are label sources like those of segkit.io.masks (``read(window)`` gives uint8 class ids:
1 on every object), so the sampler's foreground grid and pixel Dice work unchanged, and
``read_instances(window)`` gives the object ids that instance targets and object scores need.
No kind builds a full-size id image: the raster is read by window, polygons are rasterized per
window (each with its own id, so touching polygons stay separate), RLE rows are kept as
per-column intervals with their object id. Ids are those of the file for a raster; 1..N in file
order for polygons (one per feature, or per feature ``id`` when several features share one) and
RLE rows (one per row).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io._polygons import POLYGONAL, PolygonLabels, _features
from segkit.io._rlecsv import rle_fields
from segkit.io._runs import rasterize_intervals
from segkit.io._window import read_padded
from segkit.io.labels import LabelSource
from segkit.io.masks import _stem, open_by_suffix
from segkit.io.raster import Raster, open_raster
from segkit.io.rle import parse_rle, rle_runs

__all__ = ["open_instances", "InstanceRaster", "InstancePolygons", "InstanceRle"]


def open_instances(spec, image: Raster, *, image_id: str | None = None, rle_order: str = "F",
                   coords: str = "auto") -> LabelSource:
    """Instance source for ``image``, by suffix: RLE CSV, GeoJSON/JSON polygons, else an id raster."""
    return open_by_suffix(spec, rle=lambda path: InstanceRle(path, image, image_id=image_id, order=rle_order),
                          polygons=lambda path: InstancePolygons(path, image, coords=coords),
                          raster=lambda path: InstanceRaster(path, image))


class _Instances(LabelSource):
    """read() = 1 on objects (uint8); read_instances() = their ids (int32), padded like the image."""

    def _ids_inside(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        raise NotImplementedError

    def _read_inside(self, r0, r1, c0, c1):
        return (self._ids_inside(r0, r1, c0, c1) > 0).astype(np.uint8)

    def read_instances(self, window: Window) -> np.ndarray:
        """(h, w) int32 object ids of ``window`` in source pixels (0 = background; never resized:
        targets are derived at source resolution, then resized)."""
        window = Window(*(int(v) for v in window))
        return read_padded(self._ids_inside, (self.height, self.width), window, mode=self.pad_mode, value=0,
                           dtype=np.int32, channels=None)


class InstanceRaster(_Instances):
    """An integer raster the size of the image, each object its own id (0 = background).

    Float rasters are accepted when every value is a whole number (checked per window read);
    ids above 2**31 - 1 do not fit int32 and are refused.
    """

    def __init__(self, path, image: Raster):
        self._init_geometry(path, image)
        self.raster = open_raster(path, pad_mode="constant", pad_value=0)
        if (self.raster.height, self.raster.width) != (image.height, image.width):
            raise SegkitError(f"{self.path}: instance raster size {self.raster.height}x{self.raster.width} differs "
                              f"from image {image.path} size {image.height}x{image.width}")
        kind = self.raster.dtype.kind
        if kind not in "uifb":
            raise SegkitError(f"{self.path}: instance ids must be integers, the raster holds {self.raster.dtype}")
        thumb = self.raster.thumbnail(512, nearest=True)[0][..., 0]
        if kind == "f":  # fail at open on a thumbnail, and again on any window that shows a fraction
            self._check(thumb)
        values = set(np.unique(thumb).tolist())
        if len(values) == 2 and values in ({0, 1}, {0, 255}):
            warnings.warn(f"{self.path}: looks like a binary mask (values {sorted(values)}), read as instance ids: "
                          "touching objects are one object", UserWarning, stacklevel=2)

    def _check(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype.kind == "f":
            bad = raw != np.floor(raw)
            if bad.any():
                raise SegkitError(f"{self.path}: instance ids must be integers, found {float(raw[bad][0])!r} "
                                  f"(a {self.raster.dtype} raster)")
        if raw.size and (raw.min() < 0 or raw.max() > np.iinfo(np.int32).max):
            raise SegkitError(f"{self.path}: instance ids must be within 0..{np.iinfo(np.int32).max}")
        return raw

    def _ids_inside(self, r0, r1, c0, c1):
        raw = self.raster.read(Window(r0, c0, r1 - r0, c1 - c0))[..., 0]
        return self._check(raw).astype(np.int32)


class InstancePolygons(_Instances):
    """Polygons, each feature one object (a MultiPolygon feature is one object).

    Features that share a GeoJSON feature ``id`` (or property ``object_id``) are one object split
    across features: they are read as one object, with a warning line that says so. Coordinates as
    segkit.io._polygons (pixel or CRS, ``coords``); a pixel belongs to a polygon when its centre
    does; where polygons overlap, the later feature wins.
    """

    def __init__(self, path, image: Raster, *, coords: str = "auto"):
        self._init_geometry(path, image)
        self.shapes = PolygonLabels(path, image, coords=coords)  # parsing, CRS mapping and bounds
        keys = self._object_keys()
        ids: dict = {}
        self.ids = np.array([ids.setdefault(key, len(ids) + 1) for key in keys], np.int32)
        counts = Counter(keys)
        split = [key for key, n in counts.items() if n > 1]
        if split:
            warnings.warn(f"{self.path}: {len(split)} object(s) split across several features (e.g. id "
                          f"{split[0][1]!r} in {counts[split[0]]} features); each was read as one object",
                          UserWarning, stacklevel=2)

    def _object_keys(self) -> list:
        """One key per polygonal feature, in the order PolygonLabels keeps them."""
        data = json.loads(Path(self.path).read_text())
        keys = []
        for i, feature in enumerate(_features(data, self.path)):
            geom = feature.get("geometry") if feature.get("type") == "Feature" or "geometry" in feature else feature
            if not geom or geom.get("type") not in POLYGONAL:
                continue
            named = feature.get("id", (feature.get("properties") or {}).get("object_id"))
            keys.append(("id", str(named)) if named is not None else ("feature", i))
        return keys

    def _ids_inside(self, r0, r1, c0, c1):
        b = self.shapes.bounds
        hit = np.flatnonzero((b[:, 2] > c0) & (b[:, 0] < c1) & (b[:, 3] > r0) & (b[:, 1] < r1))
        if hit.size == 0:
            return np.zeros((r1 - r0, c1 - c0), np.int32)
        from affine import Affine
        from rasterio.features import rasterize

        return rasterize(((self.shapes.geoms[i], int(self.ids[i])) for i in hit), out_shape=(r1 - r0, c1 - c0),
                         transform=Affine.translation(c0, r0), fill=0, dtype=np.int32)


class InstanceRle(_Instances):
    """Per-object RLE rows of a CSV (Data Science Bowl: ``ImageId,EncodedPixels``, one row per object).

    Rows whose id is ``image_id`` (default: the image's stem or file name) are the image's objects,
    ids 1..N in file order. Runs are 1-indexed ``start length`` pairs in ``order`` F (column-major,
    DSB) or C; they are kept as per-line intervals with their object id. Two rows that share a pixel
    are an error naming both lines.
    """

    def __init__(self, path, image: Raster, *, image_id: str | None = None, order: str = "F"):
        self._init_geometry(path, image)
        if order not in ("F", "C"):
            raise SegkitError(f"{self.path}: rle order {order!r}: expected 'F' (column-major) or 'C' (row-major)")
        self.order = order
        self.image_id = image_id if image_id is not None else _stem(image.path)
        wanted = {self.image_id} if image_id is not None else {self.image_id, image.path.name}
        rows = rle_fields(self.path, wanted)
        if not rows:
            raise SegkitError(f"{self.path}: no row with id {self.image_id!r} (image {self.image_path})")
        self.lines, self.line_len = (self.width, self.height) if order == "F" else (self.height, self.width)
        self._index(rows)

    def _index(self, rows: list[tuple[int, str]]) -> None:
        starts, ends, ids, line_nos = [], [], [], []
        for k, (line_no, text) in enumerate(rows, start=1):
            try:
                s, n = rle_runs(parse_rle(text), self.height, self.width)
            except SegkitError as exc:
                raise SegkitError(f"{self.path}: line {line_no}: {exc}") from None
            keep = n > 0
            starts.append(s[keep])
            ends.append((s + n)[keep])
            ids.append(np.full(int(keep.sum()), k, np.int32))
            line_nos.append(np.full(int(keep.sum()), line_no, np.int64))
        starts, ends, ids, line_nos = (np.concatenate(v) for v in (starts, ends, ids, line_nos))
        order = np.argsort(starts, kind="stable")
        starts, ends, ids, line_nos = starts[order], ends[order], ids[order], line_nos[order]
        reach = np.maximum.accumulate(ends) if ends.size else ends
        clash = np.flatnonzero(starts[1:] < reach[:-1])
        if clash.size:
            j = int(clash[0]) + 1
            i = int(np.flatnonzero(ends[:j] > starts[j])[0])
            raise SegkitError(f"{self.path}: id {self.image_id}: objects of lines {line_nos[i]} and {line_nos[j]} "
                              f"overlap (pixel {starts[j] + 1}); per-object RLE rows must not share pixels")
        # split runs at line ends: per-line [lo, hi) intervals, sorted by line then lo (CSR)
        first, last = starts // self.line_len, (ends - 1) // self.line_len
        pieces = last - first + 1
        run = np.repeat(np.arange(starts.size), pieces)
        line = first[run] + np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        base = line * self.line_len
        self.lo = np.maximum(starts[run] - base, 0)
        self.hi = np.minimum(ends[run] - base, self.line_len)
        self.id = ids[run]
        self.ptr = np.searchsorted(line, np.arange(self.lines + 1))
        self.count = len(np.unique(ids))

    def _rasterize(self, l0: int, l1: int, m0: int, m1: int) -> np.ndarray:
        """int32 (l1-l0, m1-m0): lines l0..l1, positions m0..m1, each interval painted with its id."""
        return rasterize_intervals(self.ptr, self.lo, self.hi, l0, l1, m0, m1, values=self.id)

    def _ids_inside(self, r0, r1, c0, c1):
        if self.order == "F":
            return np.ascontiguousarray(self._rasterize(c0, c1, r0, r1).T)
        return self._rasterize(r0, r1, c0, c1)
