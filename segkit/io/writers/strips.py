"""Output writers for the inference path: RLE CSV and tiled TIFF, all atomic and streaming.

Every writer goes through :class:`segkit.io.atomic.AtomicFile`: the data is written to a
temporary file in the destination folder and committed under the final name only when the
writer is closed without an error. An exception (KeyboardInterrupt included) removes the
temporary file, so an interrupted ``segkit infer`` never leaves a partial output behind.

Strip writers receive finished row strips in row order (what ``predict_strips`` yields) and never
hold the whole image: :class:`TiffStripWriter` keeps at most one row of tiles in memory and
:class:`RleStripWriter` keeps the runs of the image being encoded.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from segkit.io.atomic import AtomicFile, atomic_path

__all__ = [
    "write_rle_csv",
    "RleStripWriter",
    "TiffStripWriter",
    "probs_to_uint8",
]


def write_rle_csv(path, rows: Iterable[tuple[str, str]], header=("id", "rle"), overwrite: bool = False) -> Path:
    """Write ``id,rle`` rows (Kaggle submission format) atomically; ``rows`` may be a generator."""
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for image_id, rle in rows:
                writer.writerow([image_id, rle])
    return Path(path)


class StripOutput:
    """Context manager of the streaming writers: commit on a clean exit, discard on any error."""

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class RleStripWriter(StripOutput):
    """A Kaggle RLE CSV written one ``id,rle`` row at a time, committed on a clean exit.

    Usage::

        with RleStripWriter("sub.csv", overwrite=True) as out:
            encoder = RleStripEncoder(height, width)   # segkit.io.rle: encodes strips as they finish
            for row0, mask in strips:
                encoder.add(mask != 0)
            out.write_row("img1", encoder.finish())

    The folder and an existing file are checked when the writer opens (before slow work).
    ``header`` names the two columns (contests differ: ``id,rle``, ``id,predicted``,
    ``ImageId,EncodedPixels``); ``empty`` is the cell of an image without foreground.
    """

    def __init__(self, path, header=("id", "rle"), overwrite: bool = False, empty: str = ""):
        self.empty = empty  # written for an image with no foreground: "" (default) or "-"
        self._atomic = AtomicFile(path, overwrite)
        try:  # a Ctrl-C while the writer opens (before any `with` can clean up) must not leave the temp file
            self._fh = open(self._atomic.tmp, "w", newline="")
            self._csv = csv.writer(self._fh)
            self._csv.writerow(header)
        except BaseException:
            self._atomic.discard()
            raise

    def write_row(self, image_id: str, rle: str) -> None:
        self._csv.writerow([image_id, rle or self.empty])

    def close(self) -> Path:
        self._fh.close()
        return self._atomic.commit()

    def abort(self) -> None:
        self._fh.close()
        self._atomic.discard()


def probs_to_uint8(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 0..255 (rounded), the format of ``--probs out.tif``."""
    return np.clip(np.rint(np.asarray(probs, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


class TiffStripWriter(StripOutput):
    """Tiled, compressed (Geo)TIFF written from row strips, holding at most one row of tiles.

    One backend on purpose: rasterio/GDAL writes both plain and georeferenced TIFFs (CRS and
    transform when given), handles tiling, deflate and BigTIFF (``BIGTIFF=IF_SAFER``), and is a
    required dependency anyway; a second tifffile path would only duplicate the tile logic.
    Strips of any height are buffered until a full row of tiles is available and then written
    as one tile-aligned window, so every compressed tile is written exactly once (writing
    partial tiles would make GDAL rewrite them at the end of the file).

    ``write(strip)`` takes ``(h, W)`` or ``(C, h, W)`` strips in row order. A float strip given
    to a uint8 writer is taken as probabilities and scaled 0..255 (the ``--probs`` output).
    ``overviews="nearest"`` (or "average", ...) adds internal 2x, 4x, ... overviews at close,
    built by GDAL from the file (bounded memory), so huge outputs open quickly in viewers.

    Metadata for viewers, all optional: ``colormap`` ({value: (r, g, b[, a])}, one band of
    uint8 only: a palette TIFF that QGIS draws in those colours), ``nodata``, per-band ``scales``
    and ``offsets`` (GDAL's unscaled value = raw * scale + offset, e.g. 1/255 for uint8
    probabilities), per-band ``descriptions`` and free ``tags``. GDAL stores them in the TIFF
    (colour map, GDAL_NODATA, GDAL_METADATA tags).
    """

    def __init__(self, path, height: int, width: int, channels: int = 1, dtype="uint8", *, crs=None,
                 transform=None, tile: int = 256, compression: str = "deflate", overwrite: bool = False,
                 overviews: str | None = None, colormap: dict | None = None, nodata: float | None = None,
                 scales: list | None = None, offsets: list | None = None, descriptions: list | None = None,
                 tags: dict | None = None):
        # why: keyword options of the TIFF file (tiles, compression, overviews, georeferencing, colour table,
        # scale), each with a default, as rasterio's profile keys.
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        if tile % 16:
            raise ValueError(f"tile must be a multiple of 16 (TIFF rule), got {tile}")
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.dtype = np.dtype(dtype)
        self.tile = int(tile)
        self.overviews = overviews  # None, or a GDAL resampling name: "nearest" (masks), "average" (probs)
        self.compression = compression
        self._atomic = AtomicFile(path, overwrite)
        profile = dict(driver="GTiff", height=self.height, width=self.width, count=self.channels,
                       dtype=self.dtype.name, tiled=True, blockxsize=self.tile, blockysize=self.tile,
                       compress=compression, BIGTIFF="IF_SAFER")
        if self.channels > 1:
            profile["interleave"] = "pixel"
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        if nodata is not None:
            profile["nodata"] = nodata
        try:
            with warnings.catch_warnings():
                # a plain (non-geo) TIFF is what the caller asked for when crs/transform are None
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self._atomic.tmp, "w", **profile)
                self._describe(colormap, scales, offsets, descriptions, tags)
        except BaseException:
            self._atomic.discard()
            raise
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._next_row = 0  # first row not yet written to the file

    def _describe(self, colormap, scales, offsets, descriptions, tags) -> None:
        if colormap:
            self._ds.write_colormap(1, {int(k): tuple(int(c) for c in v) for k, v in colormap.items()})
        if scales is not None:
            self._ds.scales = tuple(float(v) for v in scales)
        if offsets is not None:
            self._ds.offsets = tuple(float(v) for v in offsets)
        if descriptions is not None:
            self._ds.descriptions = tuple(str(v) for v in descriptions)
        if tags:
            self._ds.update_tags(**{str(k): str(v) for k, v in tags.items()})

    @property
    def rows_received(self) -> int:
        return self._next_row + self._pending_rows

    def write(self, strip: np.ndarray) -> None:
        strip = np.asarray(strip)
        if strip.ndim == 2:
            strip = strip[None]
        if strip.ndim != 3 or strip.shape[0] != self.channels or strip.shape[2] != self.width:
            raise ValueError(f"strip shape {strip.shape} does not fit ({self.channels}, h, {self.width})")
        if self.rows_received + strip.shape[1] > self.height:
            raise ValueError(f"strip rows {self.rows_received}+{strip.shape[1]} exceed height {self.height}")
        if strip.dtype != self.dtype:
            if self.dtype == np.uint8 and np.issubdtype(strip.dtype, np.floating):
                strip = probs_to_uint8(strip)
            else:
                strip = strip.astype(self.dtype, casting="same_kind")
        self._pending.append(strip)
        self._pending_rows += strip.shape[1]
        if self._pending_rows >= self.tile or self.rows_received == self.height:
            self._flush(final=self.rows_received == self.height)

    add = write  # same verb as RleStripWriter.add

    def _flush(self, final: bool) -> None:
        from rasterio.windows import Window as RioWindow

        if not self._pending:
            return
        block = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = block.shape[1] if final else (block.shape[1] // self.tile) * self.tile
        if n:
            self._ds.write(block[:, :n], window=RioWindow(0, self._next_row, self.width, n))
            self._next_row += n
        rest = block[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def close(self) -> Path:
        if self.rows_received != self.height:
            self.abort()
            raise ValueError(f"{self._atomic.path}: closed after {self.rows_received} of {self.height} rows")
        try:
            self._flush(final=True)
            if self.overviews:
                self._build_overviews()
            self._ds.close()
        except BaseException:
            self.abort()
            raise
        return self._atomic.commit()

    def _build_overviews(self) -> None:
        import rasterio
        from rasterio.enums import Resampling

        factors, f = [], 2
        while max(self.height, self.width) / f >= self.tile // 2:
            factors.append(f)
            f *= 2
        if factors:
            with rasterio.Env(COMPRESS_OVERVIEW=self.compression.upper()):
                self._ds.build_overviews(factors, Resampling[self.overviews])
            self._ds.update_tags(ns="rio_overview", resampling=self.overviews)

    def abort(self) -> None:
        try:
            self._ds.close()
        finally:
            self._atomic.discard()
