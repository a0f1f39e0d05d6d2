"""Pyramidal OME-TIFF from row strips: what QuPath's documentation recommends for large label images.

tifffile writes a pyramid level by level (full resolution first, the reduced levels as SubIFDs
of it), so the reduced levels must exist before the file is written, and building them while
the strips stream in would hold a quarter of the image. Instead the strips go to a hidden
tiled GeoTIFF next to the output (:class:`TiffStripWriter`, bounded memory, its internal
overviews built by GDAL), which is then copied tile row by tile row into the OME-TIFF: level 0
as the main image, every overview as a SubIFD. Memory stays at one row of tiles; the cost is
the scratch file on disk while the output is written. GeoTIFF keys, GDAL_NODATA and
GDAL_METADATA (scale, offset, descriptions) are copied into the first page, so GDAL and QGIS
still read the georeferencing and probability scale of an ``.ome.tif`` output.

The output is committed atomically like every other writer (``AtomicFile``); the scratch file
is removed whatever happens.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from segkit.io.atomic import TEMP_SUFFIX, AtomicFile, immediate_commits, temp_prefix
from segkit.io.writers.strips import StripOutput, TiffStripWriter

__all__ = ["OmeTiffStripWriter", "is_ome_path"]

# GeoTIFF (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams,
# GeoAsciiParams) and GDAL (GDAL_METADATA, GDAL_NODATA) tags carried over into the OME-TIFF.
CARRIED_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)


def is_ome_path(path) -> bool:
    """True for ``*.ome.tif`` / ``*.ome.tiff`` (case-insensitive)."""
    return str(path).lower().endswith((".ome.tif", ".ome.tiff"))


class OmeTiffStripWriter(StripOutput):
    """A pyramidal OME-TIFF (axes YX, or CYX for several channels) written from row strips.

    Takes :class:`TiffStripWriter`'s arguments (``overviews`` names the GDAL resampling of the
    reduced levels: ``nearest`` for class masks, ``average`` for probabilities) plus
    ``channel_names`` for the OME ``Channel`` elements and ``description`` for the OME ``Image``
    (e.g. how to turn uint8 values into probabilities: GDAL does not read the per-band scale of
    the second and later channels of an OME-TIFF, which are separate pages).
    """

    def __init__(self, path, height: int, width: int, channels: int = 1, dtype="uint8", *,
                 overwrite: bool = False, overviews: str = "nearest", channel_names: list | None = None,
                 description: str | None = None, tile: int = 256, **tiff_options):
        # why: keyword options of the OME-TIFF file (tiles, overviews, channel names, compression), each with a
        # default.
        self._atomic = AtomicFile(path, overwrite)
        self.tile, self.channels = int(tile), int(channels)
        self.channel_names = list(channel_names) if channel_names else None
        self.description = description
        # named like AtomicFile's temporary files, so a stale one is recognised the same way
        fd, scratch = tempfile.mkstemp(prefix=temp_prefix(Path(path)), suffix=".levels" + TEMP_SUFFIX,
                                       dir=Path(path).parent)
        os.close(fd)
        self._scratch = Path(scratch)
        try:
            self._levels = TiffStripWriter(self._scratch, height, width, channels, dtype, tile=tile,
                                           overwrite=True, overviews=overviews or "nearest", **tiff_options)
        except BaseException:
            self._cleanup()
            raise

    def write(self, strip: np.ndarray) -> None:
        self._levels.write(strip)

    add = write

    def close(self) -> Path:
        try:
            with immediate_commits():  # the scratch levels are read back below: not an output to stage
                self._levels.close()
            self._convert()
        except BaseException:
            self._atomic.discard()
            self._cleanup()
            raise
        self._cleanup()
        return self._atomic.commit()

    def abort(self) -> None:
        try:
            self._levels.abort()
        finally:
            self._atomic.discard()
            self._cleanup()

    def _cleanup(self) -> None:
        self._scratch.unlink(missing_ok=True)

    def _convert(self) -> None:
        with warnings.catch_warnings():  # a plain (non-geo) mask is what was asked for
            from rasterio.errors import NotGeoreferencedWarning

            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self._copy_levels()

    def _copy_levels(self) -> None:
        import rasterio
        import tifffile

        with rasterio.open(self._scratch) as ds:
            n_overviews = len(ds.overviews(1))
            dtype, compression = np.dtype(ds.dtypes[0]), "zlib"
        with tifffile.TiffFile(self._scratch) as tif:
            page = tif.pages.first
            extratags = [(t.code, t.dtype, t.count, t.value, True) for t in page.tags.values() if t.code in CARRIED_TAGS]
        axes = "YX" if self.channels == 1 else "CYX"
        metadata = {"axes": axes}
        if self.channel_names:
            metadata["Channel"] = {"Name": self.channel_names}
        if self.description:
            metadata["Description"] = self.description
        with tifffile.TiffWriter(self._atomic.tmp, bigtiff=True, ome=True) as out:
            for level in range(n_overviews + 1):
                with rasterio.open(self._scratch, **({"overview_level": level - 1} if level else {})) as ds:
                    shape = (ds.height, ds.width) if self.channels == 1 else (self.channels, ds.height, ds.width)
                    options = dict(shape=shape, dtype=dtype, tile=(self.tile, self.tile), compression=compression,
                                   photometric="minisblack")
                    if level == 0:
                        options.update(subifds=n_overviews, metadata=metadata, extratags=extratags)
                    else:
                        options.update(subfiletype=1, metadata=None)
                    out.write(self._tiles(ds), **options)

    def _tiles(self, ds):
        """Full-size tiles of every channel in TIFF order (channel, tile row, tile column), zero padded."""
        from rasterio.windows import Window as RioWindow

        t = self.tile
        for band in range(1, self.channels + 1):
            for r0 in range(0, ds.height, t):
                rows = ds.read(band, window=RioWindow(0, r0, ds.width, min(t, ds.height - r0)))
                for c0 in range(0, ds.width, t):
                    block = np.zeros((t, t), rows.dtype)
                    part = rows[:, c0:c0 + t]
                    block[:part.shape[0], :part.shape[1]] = part
                    yield block
