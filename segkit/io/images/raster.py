"""Open any large image and read windows of it: one interface over tifffile, rasterio and OpenCV.

    raster = open_raster("slide.tif")
    tile = raster.read(Window(row, col, 512, 512), out_size=(256, 256))   # HWC, raw dtype

Backend choice: a TIFF carrying GeoTIFF tags goes to rasterio (so crs/transform are set), any
other TIFF to tifffile (tiled/striped, BigTIFF, pyramidal/OME levels, planar or interleaved;
only the tiles a window touches are decoded), PNG/JPEG/BMP to OpenCV (decoded whole: those
formats cannot be read by window), anything else GDAL can open to rasterio.
A Raster pickles as its path and options; each process re-opens the file on first use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from segkit.ground.errors import SegkitError, warn_once
from segkit.ground.geometry import Window
from segkit.io.limits import check_decoded, check_image_size, declared_size
from segkit.io.images.window import (
    block_edges,
    check_pad_mode,
    read_padded,
    resize,
    thumb_shape,
)

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".tf2", ".svs", ".ndpi", ".scn", ".qptiff", ".bif"}
OPENCV_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
# GDAL's block cache: big enough for the blocks of a few windows and their neighbours, small
# enough that a DataLoader worker stays bounded (GDAL's default is 5% of RAM per process).
# Lowered process-wide once (a user's GDAL_CACHEMAX environment variable wins) rather than set
# by rasterio.Env around each read, which costs ~4 ms per window and is undone on exit.
GDAL_CACHE_BYTES = 128 * 2**20
GDAL_OPEN_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}  # no directory listing per open
# decoded bytes one read may hold before a downsampling read is done in strips
STRIP_BYTES = 64 * 2**20


def open_raster(path, *, pad_mode: str = "constant", pad_value=0) -> "Raster":
    """Open an image for window reads; SegkitError naming the file if it is missing or unreadable."""
    return Raster(path, pad_mode=pad_mode, pad_value=pad_value)


class Raster:
    """An image read by windows. Attributes: path, height, width, channels, dtype, crs, transform,
    nodata, levels (list of (h, w), full resolution first), backend ("tifffile"|"rasterio"|"opencv")."""

    def __init__(self, path, *, pad_mode: str = "constant", pad_value=0):
        self.path = Path(path)
        self.pad_mode = check_pad_mode(pad_mode)
        self.pad_value = pad_value
        self._handle, self._pid = None, os.getpid()
        handle = self._open()
        self.backend = handle.name
        self.levels = list(handle.levels)
        self.height, self.width = self.levels[0]
        check_image_size(self.path, self.height, self.width)
        if min(self.height, self.width) < 2:
            raise SegkitError(f"{self.path}: image is {self.height}x{self.width} px; nothing to segment or classify")
        self.channels, self.dtype = int(handle.channels), np.dtype(handle.dtype)
        self.crs, self.transform, self.nodata = handle.crs, handle.transform, handle.nodata

    # -- opening, pickling -------------------------------------------------------------------
    def _open(self):
        if self._handle is not None and self._pid != os.getpid():
            # forked (DataLoader workers with the fork start method): an inherited file shares its
            # offset with the parent's, so every process reads through its own handle
            self._handle = None
        if self._handle is None:
            self._pid = os.getpid()
            if not self.path.is_file():
                raise SegkitError(f"{self.path}: image file not found")
            try:
                self._handle = _open_backend(self.path)
            except SegkitError:
                raise
            except Exception as exc:  # every library has its own error types for a bad file
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SegkitError(f"{self.path}: cannot read image ({detail})") from exc
        return self._handle

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handle"] = None  # open files and decoded arrays stay in their process
        return state

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Raster({str(self.path)!r}, {self.height}x{self.width}x{self.channels} {self.dtype}, "
                f"{self.backend}, levels={len(self.levels)})")

    # -- reading ------------------------------------------------------------------------------
    def read(self, window: Window, out_size: tuple[int, int] | None = None, *,
             nearest: bool = False) -> np.ndarray:
        """HWC window in the raw dtype; out_size (h, w) resamples (INTER_AREA down, INTER_LINEAR
        up, or nearest) reading from the coarsest pyramid level still at least as fine as needed."""
        window = Window(*(int(v) for v in window))
        if window.height <= 0 or window.width <= 0:
            raise ValueError(f"window {tuple(window)}: height and width must be positive")
        if out_size is None or tuple(out_size) == (window.height, window.width):
            return self._read_level(0, window)
        oh, ow = (int(v) for v in out_size)
        level = self._pick_level(window.height / oh, window.width / ow)
        lwin = self._level_window(level, window)
        itemsize = self.dtype.itemsize * self.channels
        if lwin.height * lwin.width * itemsize <= STRIP_BYTES or oh >= lwin.height:
            return resize(self._read_level(level, lwin), (oh, ow), nearest=nearest)
        # a big window to a small output (thumbnails): strips keep the decoded part bounded
        out = np.empty((oh, ow, self.channels), self.dtype)
        step = max(1, math.floor(STRIP_BYTES / (lwin.width * itemsize) * oh / lwin.height))
        edges = block_edges(lwin.height, oh)
        for o0 in range(0, oh, step):
            o1 = min(oh, o0 + step)
            strip = Window(lwin.row + int(edges[o0]), lwin.col, int(edges[o1] - edges[o0]), lwin.width)
            out[o0:o1] = resize(self._read_level(level, strip), (o1 - o0, ow), nearest=nearest)
        return out

    def thumbnail(self, max_side: int = 1024, *, nearest: bool = False) -> tuple[np.ndarray, float]:
        """(whole image at most max_side on its longer side, HWC raw dtype; source px per thumb px)."""
        oh, ow = thumb_shape(self.height, self.width, max_side)
        image = self.read(Window(0, 0, self.height, self.width), (oh, ow), nearest=nearest)
        return image, max(self.height / oh, self.width / ow)

    def _pick_level(self, fy: float, fx: float) -> int:
        best = 0
        for i, (lh, lw) in enumerate(self.levels[1:], start=1):
            sy, sx = self.height / lh, self.width / lw
            if sy <= fy * 1.001 and sx <= fx * 1.001:
                best = i  # levels are ordered fine to coarse
        return best

    def _level_window(self, level: int, window: Window) -> Window:
        if level == 0:
            return window
        lh, lw = self.levels[level]
        sy, sx = self.height / lh, self.width / lw
        r0, c0 = round(window.row / sy), round(window.col / sx)
        r1, c1 = max(r0 + 1, round(window.bottom / sy)), max(c0 + 1, round(window.right / sx))
        return Window(r0, c0, r1 - r0, c1 - c0)

    def _read_level(self, level: int, window: Window) -> np.ndarray:
        handle = self._open()

        def inside(r0, r1, c0, c1):
            try:
                return handle.read(level, r0, r1, c0, c1)
            except SegkitError:
                raise
            except Exception as exc:  # a file corrupt past its header fails here, mid-read, in any library
                cause = exc
                while cause.__cause__ is not None:  # rasterio: "Read failed. See previous exception"
                    cause = cause.__cause__
                detail = (str(cause).splitlines() or [""])[0] or type(cause).__name__
                raise SegkitError(f"{self.path}: cannot read rows {r0}..{r1} (corrupt or truncated file? "
                                  f"{type(cause).__name__}: {detail})") from exc

        out = read_padded(inside, self.levels[level], window, mode=self.pad_mode, value=self.pad_value,
                          dtype=self.dtype, channels=self.channels)
        if self.dtype.kind == "f" and not np.isfinite(out).all():
            _warn_not_finite(self.path)
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out


def _warn_not_finite(path: Path) -> None:
    """NaN/inf pixels (often a float raster's no-data) would turn every loss and probability into NaN."""
    warn_once(f"{path}: NaN or infinite pixels, read as 0")


# -- backends: levels, channels, dtype, crs, transform, nodata, read(level, r0, r1, c0, c1), close()
def _open_backend(path: Path):
    suffix = path.suffix.lower()
    if suffix in OPENCV_SUFFIXES:
        return _OpenCVBackend(path)
    if suffix in TIFF_SUFFIXES or _is_tiff(path):
        import tifffile

        from segkit.io.images.tiff import TiffBackend, has_geotiff_tags

        try:
            tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError:
            return _RasterioBackend(path)  # not a TIFF after all (or a flavour only GDAL reads)
        if has_geotiff_tags(tif):
            tif.close()
            return _RasterioBackend(path)
        try:
            backend = TiffBackend(path, tif)
        except Exception:
            tif.close()
            raise
        backend.name = "tifffile"
        return backend
    return _RasterioBackend(path)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class _RasterioBackend:
    name = "rasterio"

    def __init__(self, path: Path):
        import rasterio

        _limit_gdal_cache()
        self._rasterio, self.path = rasterio, path
        with rasterio.Env(**GDAL_OPEN_OPTIONS):
            ds = rasterio.open(path)
        self._datasets = {0: ds}
        self.channels, self.dtype = ds.count, np.dtype(ds.dtypes[0])
        self.crs = ds.crs if ds.crs else None
        self.transform = ds.transform if (ds.crs or not ds.transform.is_identity) else None
        self.nodata = ds.nodata
        factors = ds.overviews(1) if ds.count else []
        self.levels = [(ds.height, ds.width)] + [(math.ceil(ds.height / f), math.ceil(ds.width / f))
                                                 for f in factors]

    def _dataset(self, level: int):
        ds = self._datasets.get(level)
        if ds is None:
            with self._rasterio.Env(**GDAL_OPEN_OPTIONS):
                ds = self._rasterio.open(self.path, overview_level=level - 1)
            self._datasets[level] = ds
            self.levels[level] = (ds.height, ds.width)
        return ds

    def read(self, level: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        from rasterio.windows import Window as RioWindow

        ds = self._dataset(level)
        r1, c1 = min(r1, ds.height), min(c1, ds.width)  # rounded overview sizes may differ by a pixel
        data = ds.read(window=RioWindow(c0, r0, c1 - c0, r1 - r0))
        return np.ascontiguousarray(data.transpose(1, 2, 0))

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()


def _limit_gdal_cache() -> None:
    if "GDAL_CACHEMAX" in os.environ:
        return
    try:  # rasterio's setter calls GDALSetCacheMax64 (bytes); there is no public one
        from rasterio._env import get_gdal_config, set_gdal_config

        if int(get_gdal_config("GDAL_CACHEMAX") or 0) > GDAL_CACHE_BYTES:
            set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
    except (ImportError, TypeError, ValueError):
        pass


class _OpenCVBackend:
    name = "opencv"
    crs = transform = nodata = None

    def __init__(self, path: Path):
        import cv2

        declared = declared_size(path)  # OpenCV decodes the whole file: refuse a bomb before it does
        if declared is not None:
            check_image_size(path, *declared)
            check_decoded(path, *declared, "the whole image")
        data = np.fromfile(path, dtype=np.uint8)
        try:  # OpenCV's own "[ WARN ] ... buffer is incomplete" line would double segkit's one-line error
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if image is None:
            raise SegkitError(f"{path}: cannot read image (OpenCV could not decode it)")
        if image.ndim == 2:
            image = image[:, :, None]
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
        self.image = image
        self.levels = [image.shape[:2]]
        self.channels, self.dtype = image.shape[2], image.dtype

    def read(self, level: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return self.image[r0:r1, c0:c1].copy()

    def close(self) -> None:
        self.image = None
