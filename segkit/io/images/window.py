"""Window helpers shared by the image readers and the label sources: padding and resizing.

A reader only has to answer in-bounds reads; `read_padded` turns any window, including ones
that reach past the border or lie wholly outside, into an in-bounds read plus padding.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from segkit.ground.geometry import Window

PAD_MODES = ("constant", "reflect")

# cv2.resize handles these dtypes for every interpolation; others go through float64
_CV2_DTYPES = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64)}


def check_pad_mode(mode: str) -> str:
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode {mode!r}: expected one of {', '.join(PAD_MODES)}")
    return mode


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into [0, n) without repeating the edge (numpy 'reflect', cv2 REFLECT_101),
    for any distance past the border (the pattern repeats with period 2n-2)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


ReadInside = Callable[[int, int, int, int], np.ndarray]  # (r0, r1, c0, c1) -> array, in bounds


def read_padded(read_inside: ReadInside, size: tuple[int, int], window: Window, *, mode: str,
                value, dtype, channels: int | None) -> np.ndarray:
    """`window` of an image of `size` (h, w): in-bounds part from read_inside, the rest padded.

    channels None means a 2-D (HW) result, else HWC.
    """
    height, width = size
    r0, c0, h, w = (int(v) for v in window)
    if h <= 0 or w <= 0:
        raise ValueError(f"window {tuple(window)}: height and width must be positive")
    r1, c1 = r0 + h, c0 + w
    inside = r0 >= 0 and c0 >= 0 and r1 <= height and c1 <= width
    if inside:
        return read_inside(r0, r1, c0, c1)
    shape = (h, w) if channels is None else (h, w, channels)
    if mode == "reflect":
        rows = reflect_index(np.arange(r0, r1), height)
        cols = reflect_index(np.arange(c0, c1), width)
        lo_r, hi_r, lo_c, hi_c = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        block = read_inside(int(lo_r), int(hi_r), int(lo_c), int(hi_c))
        return np.ascontiguousarray(block[np.ix_(rows - lo_r, cols - lo_c)])
    out = np.full(shape, value, dtype=dtype)
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
    if ir0 < ir1 and ic0 < ic1:
        out[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = read_inside(ir0, ir1, ic0, ic1)
    return out


def resize(data: np.ndarray, out_size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """HW or HWC array resized to out_size (h, w): INTER_AREA down, INTER_LINEAR up, or nearest."""
    oh, ow = (int(v) for v in out_size)
    h, w = data.shape[:2]
    if (oh, ow) == (h, w):
        return data
    if nearest:
        interp = cv2.INTER_NEAREST_EXACT  # samples source pixel floor((i + 0.5) * scale)
    else:
        interp = cv2.INTER_AREA if oh <= h and ow <= w else cv2.INTER_LINEAR
    src = data
    if data.dtype not in _CV2_DTYPES:
        src = data.astype(np.float64) if not nearest or data.dtype == np.bool_ else data
        if nearest and src.dtype not in _CV2_DTYPES:
            # cv2 nearest cannot take e.g. uint32/int8: index the same centre samples
            return np.ascontiguousarray(data[np.ix_(nearest_index(h, oh), nearest_index(w, ow))])
    channels = src.shape[2] if src.ndim == 3 else None
    if channels is not None and channels > 4:
        # cv2 handles up to 512 channels but slowly for many: resize in groups of 4
        out = np.concatenate([_cv2_resize(src[..., i:i + 4], ow, oh, interp)
                              for i in range(0, channels, 4)], axis=2)
    else:
        out = _cv2_resize(src, ow, oh, interp)
    if out.dtype != data.dtype:
        if np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
            info = np.iinfo(data.dtype) if data.dtype != np.bool_ else None
            out = np.rint(out)
            if info is not None:
                out = np.clip(out, info.min, info.max)
        out = out.astype(data.dtype)
    return out


def _cv2_resize(src: np.ndarray, ow: int, oh: int, interp: int) -> np.ndarray:
    out = cv2.resize(np.ascontiguousarray(src), (ow, oh), interpolation=interp)
    if src.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]  # cv2 drops a single channel
    return out


def thumb_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a thumbnail whose longer side is at most max_side (never larger than the image)."""
    if max_side <= 0:
        raise ValueError(f"max_side {max_side}: must be positive")
    scale = max(height, width) / max_side
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def block_edges(n: int, m: int) -> np.ndarray:
    """m+1 edges splitting n source pixels into m blocks (block j covers edges[j]..edges[j+1])."""
    return np.floor(np.arange(m + 1) * (n / m)).astype(np.int64)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0



def nearest_index(n: int, m: int) -> np.ndarray:
    """Source indices a nearest resize of n pixels to m samples: floor((i + 0.5) * n / m)."""
    return np.minimum(np.floor((np.arange(m) + 0.5) * (n / m)), n - 1).astype(np.intp)


def resize_nearest(mask: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """HW (or HWC) nearest resize sampling output pixel centres (cv2.INTER_NEAREST_EXACT)."""
    oh, ow = (int(v) for v in out_size)
    if mask.shape[:2] == (oh, ow):
        return mask
    return resize(mask, (oh, ow), nearest=True)
