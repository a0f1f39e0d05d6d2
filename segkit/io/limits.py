"""Decompression bombs: sizes an image file declares, checked before anything is decoded.

A 100 kB PNG may declare 60000 x 60000 pixels; OpenCV decodes a PNG, JPEG, BMP or WebP whole,
so opening it would allocate gigabytes (and, RGBA, four times that). A TIFF can do the same
with one tile (or strip) of absurd size: a window read decodes whole segments. So:

- a file decoded whole (OpenCV formats) may hold at most ``max_decoded_pixels()`` pixels,
  read from its header (PNG IHDR, JPEG SOF, BMP, WebP VP8/VP8L/VP8X) without decoding;
- a TIFF segment (tile or strip) likewise; a TIFF tiled properly is read at any size;
- any image may declare at most ``MAX_IMAGE_PIXELS`` pixels in total (1e12: 1,000,000 px
  square, beyond any slide or scene; sampling grids and thumbnails are sized from it).

The limit is ``SEGKIT_MAX_DECODED_PIXELS`` in the environment (default 2^28 = 268 Mpx, i.e.
a 16384 x 16384 image, 1 GiB as RGBA uint8). Polygon files (GeoJSON) are parsed whole: their
limit is ``SEGKIT_MAX_VECTOR_BYTES`` (default 256 MiB of file, about 2.3 GB parsed).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from segkit.ground.errors import SegkitError

DEFAULT_MAX_DECODED_PIXELS = 2**28
MAX_IMAGE_PIXELS = 10**12
ENV = "SEGKIT_MAX_DECODED_PIXELS"
DEFAULT_MAX_VECTOR_BYTES = 256 * 2**20
VECTOR_ENV = "SEGKIT_MAX_VECTOR_BYTES"


def max_decoded_pixels() -> int:
    """The limit on pixels decoded in one piece (the environment's, else the default)."""
    return _env_limit(ENV, DEFAULT_MAX_DECODED_PIXELS)


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(float(raw)) if raw.strip() else default
    except ValueError:
        raise SegkitError(f"{name}={raw[:40]!r}: expected a number") from None
    if value < 1:
        raise SegkitError(f"{name}={raw[:40]!r}: must be >= 1")
    return value


def check_vector_file(path) -> None:
    """Polygon labels are parsed whole (about 9 bytes of memory per byte of GeoJSON, measured on
    1M vertices): files above ``SEGKIT_MAX_VECTOR_BYTES`` (default 256 MiB) are refused, named."""
    limit = _env_limit(VECTOR_ENV, DEFAULT_MAX_VECTOR_BYTES)
    size = os.path.getsize(path)
    if size > limit:
        raise SegkitError(f"{path}: {_bytes(size)} of polygons, above the {_bytes(limit)} segkit parses in memory "
                          f"({VECTOR_ENV}); split it per image, or raise the limit")


def _bytes(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count >= 2**24 else f"{count} bytes"


def check_image_size(path, height: int, width: int) -> None:
    """Refuse an image whose declared size is absurd (before any grid or thumbnail is sized)."""
    if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
        raise SegkitError(f"{path}: declares {width} x {height} px, more than segkit reads "
                          f"({MAX_IMAGE_PIXELS:.0e} px); a corrupt or hostile header?")


def check_decoded(path, height: int, width: int, what: str) -> None:
    """Refuse ``what`` (the whole image, one tile) of height x width px decoded in one piece above the limit."""
    limit = max_decoded_pixels()
    if height * width > limit:
        raise SegkitError(f"{path}: {what} of {width} x {height} px ({_px(height * width)}) would be decoded in "
                          f"one piece, above the limit of {_px(limit)} ({ENV}); re-save it as a TIFF in 512 px "
                          "tiles, or raise the limit if you trust the file")


def _px(count: int) -> str:
    return f"{count / 1e6:.0f} Mpx" if count >= 10**7 else f"{count} px"


def declared_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the header of a PNG, JPEG, BMP or WebP file; None if not recognised."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return height, width
        if head[:2] == b"BM" and len(head) >= 26:
            width, height = struct.unpack("<ii", head[18:26])
            return abs(height), abs(width)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg_size(fh)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return height, width
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return height & 0x3FFF, width & 0x3FFF
    return None


def _jpeg_size(fh) -> tuple[int, int] | None:
    """Walk the JPEG markers to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC)."""
    while True:
        byte = fh.read(1)
        while byte == b"\xff":
            byte = fh.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue  # markers without a length
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data = fh.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return height, width
        if marker == 0xDA or length < 2:
            return None  # image data before any frame header: not a JPEG OpenCV would decode
        fh.seek(length - 2, os.SEEK_CUR)
