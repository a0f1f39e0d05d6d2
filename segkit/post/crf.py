"""Dense CRF refinement of probabilities (Krähenbühl & Koltun) through pydensecrf, tiled.

pydensecrf is an optional extra (``pip install 'segkit[crf]'``, distribution pydensecrf2,
import name ``pydensecrf``); without it :func:`dense_crf` raises a one-line SegkitError with the
install command. A CRF over a whole slide would need hundreds of bytes per pixel, so large
inputs go through :func:`tiled_crf` (cores that partition the image, each solved with
``overlap`` pixels of context on every side and only its core kept) and, on a stream of row
strips, :class:`CrfStripProcessor` (rows of context kept between strips).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window

__all__ = ["dense_crf", "tiled_crf", "CrfStripProcessor", "RowContextStream", "CRF_INSTALL_HINT"]

CRF_INSTALL_HINT = "dense CRF needs the crf extra: pip install 'segkit[crf]' (pydensecrf2)"


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf import utils
    except ImportError:
        raise SegkitError(CRF_INSTALL_HINT) from None
    return dcrf, utils


def _as_uint8_image(image: np.ndarray) -> np.ndarray:
    """uint8 as is; float taken as [0, 1] (e.g. the model's preprocessed input); other integer
    types scaled by their range (the CRF's ``srgb`` is in 0..255 intensity units)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        scaled = image * 255.0
    elif np.issubdtype(image.dtype, np.integer):
        scaled = image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)
    else:
        raise ValueError(f"dense_crf: image must be uint8, another integer type or float in [0, 1], got {image.dtype}")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = 5, sxy_gaussian: float = 3,
              compat_gaussian: float = 3, sxy_bilateral: float = 80, srgb: float = 13,
              compat_bilateral: float = 10) -> np.ndarray:
    """Refined probabilities (C, h, w) float32 from an image (h, w[, ch]) and probabilities (C, h, w).

    C == 1 (sigmoid) is solved as the two classes (1 - p, p) and returned as one channel; C > 1
    is taken as a distribution over classes (renormalized per pixel). The image is uint8 (or
    float in [0, 1], scaled); any channel count works (the bilateral kernel uses every channel
    with the same ``srgb`` scale). Parameters as in the DenseCRF paper / pydensecrf's
    ``addPairwiseGaussian`` (sxy, compat) and ``addPairwiseBilateral`` (sxy, srgb, compat).
    """
    dcrf, utils = _densecrf()
    probs = np.asarray(probs, dtype=np.float32)
    image = _as_uint8_image(image)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs {probs.shape} do not match image {image.shape}")
    c, h, w = probs.shape
    binary = c == 1
    dist = np.concatenate([1.0 - probs, probs]) if binary else probs / np.maximum(probs.sum(0, keepdims=True), 1e-6)
    n = dist.shape[0]
    crf = dcrf.DenseCRF(h * w, n)
    crf.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(dist)))
    crf.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(sxy_gaussian, sxy_gaussian), shape=(h, w)),
                          compat=compat_gaussian)
    feats = utils.create_pairwise_bilateral(sdims=(sxy_bilateral, sxy_bilateral), schan=(srgb,) * image.shape[2],
                                            img=image, chdim=2)
    crf.addPairwiseEnergy(feats, compat=compat_bilateral)
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(n, h, w)
    return q[1:2] if binary else q


def _cores(length: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


def _crf_scaled(image: np.ndarray, probs: np.ndarray, downscale: float, params: dict) -> np.ndarray:
    """dense_crf on a copy shrunk by ``downscale`` (INTER_AREA), probabilities resized back (linear)."""
    if downscale <= 1:
        return dense_crf(image, probs, **params)
    import cv2

    h, w = probs.shape[1:]
    size = (max(1, round(w / downscale)), max(1, round(h / downscale)))
    small_img = cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    small_p = np.stack([cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in probs])
    q = dense_crf(small_img, small_p, **params)
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in q])


def tiled_crf(image: np.ndarray, probs: np.ndarray, *, tile: int = 512, overlap: int = 64,
              rows: tuple[int, int] | None = None, downscale: float = 1, **params) -> np.ndarray:
    """dense_crf over tiles: cores of ``tile`` px partition the output, each solved with ``overlap``
    px of context on every side (clipped to the array) and only its core kept.

    ``rows=(a, b)``: refine only rows a..b of the arrays (the rest is context); returns
    (C, b - a, w). Peak memory is one CRF of (tile + 2 * overlap)^2 pixels. ``downscale`` > 1
    solves each tile at 1/downscale resolution (about downscale^2 times faster; the CRF's
    ``sxy_*`` are then in reduced pixels) and resizes the probabilities back.
    """
    image = _as_uint8_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    h, w = probs.shape[1:]
    a, b = rows if rows is not None else (0, h)
    out = np.empty((probs.shape[0], b - a, w), np.float32)
    for r0, r1 in _cores(b - a, tile):
        r0, r1 = r0 + a, r1 + a
        cr0, cr1 = max(0, r0 - overlap), min(h, r1 + overlap)
        for c0, c1 in _cores(w, tile):
            cc0, cc1 = max(0, c0 - overlap), min(w, c1 + overlap)
            q = _crf_scaled(image[cr0:cr1, cc0:cc1], probs[:, cr0:cr1, cc0:cc1], downscale, params)
            out[:, r0 - a:r1 - a, c0:c1] = q[:, r0 - cr0:r1 - cr0, c0 - cc0:c1 - cc0]
    return out


class RowContextStream:
    """Delay a stream of row strips by ``margin`` rows so each row is processed with context.

    ``process(arrays, open_top, open_bottom, out_start, out_stop)`` gets the context rows (each
    array sliced on axis -2) and returns the processed arrays for the rows
    ``[out_start, out_stop)`` of that context. ``open_top``/``open_bottom`` tell whether the
    context was cut (more image rows exist beyond it). Only ``~ margin + strip`` rows are held.
    """

    def __init__(self, height: int, margin: int, process):
        self.height, self.margin, self.process = int(height), max(0, int(margin)), process
        self._buf: list[np.ndarray] | None = None
        self._buf_row0 = 0
        self._received = 0
        self._emitted = 0

    def push(self, row0: int, *arrays: np.ndarray) -> list[tuple]:
        """Add the strip starting at ``row0``; returns finished ``(row0, *arrays)`` strips."""
        if row0 != self._received:
            raise ValueError(f"strips must arrive in row order: expected row {self._received}, got {row0}")
        rows = arrays[0].shape[-2]
        if self._received + rows > self.height:
            raise ValueError(f"strip rows {row0}+{rows} exceed height {self.height}")
        if self._buf is None:
            self._buf = [np.asarray(a) for a in arrays]
        else:
            self._buf = [np.concatenate([b, a], axis=-2) for b, a in zip(self._buf, arrays)]
        self._received += rows
        ready = self.height if self._received == self.height else self._received - self.margin
        if ready <= self._emitted:
            return []
        start = max(0, self._emitted - self.margin)
        ctx = [b[..., start - self._buf_row0:, :] for b in self._buf]
        out = self.process(ctx, start > 0, self._received < self.height,
                           self._emitted - start, ready - start)
        result = [(self._emitted, *out)]
        self._emitted = ready
        keep = max(0, ready - self.margin)
        self._buf = [b[..., keep - self._buf_row0:, :] for b in self._buf]
        self._buf_row0 = keep
        return result

    def finish(self) -> list[tuple]:
        if self._received != self.height:
            raise ValueError(f"got {self._received} rows, image height is {self.height}")
        return []

    def __call__(self, strips: Iterable[tuple]) -> Iterator[tuple]:
        for row0, *arrays in strips:
            yield from self.push(row0, *arrays)
        yield from self.finish()


class CrfStripProcessor:
    """tiled_crf on probabilities arriving as row strips (the streaming predictor's output).

    ``push(row0, probs, image=None)`` returns refined ``(row0, probs)`` strips, delayed by
    ``overlap`` rows so every row has context above and below. The image rows come either with
    each strip (``image`` HWC) or from ``read_image(Window)``, e.g.
    ``lambda w: stack_channels(raster.read(w), specs)`` so the CRF sees the intensity windows the
    model saw (float [0, 1] is scaled to uint8). Holds ~ (strip + 2 * overlap) rows. Other
    keywords (``downscale`` and the dense_crf parameters) go to :func:`tiled_crf`.
    """

    def __init__(self, height: int, width: int, read_image: Callable[[Window], np.ndarray] | None = None, *,
                 tile: int = 512, overlap: int = 64, **params):
        _densecrf()  # fail before any inference work when the extra is missing
        self.width, self.read_image = int(width), read_image
        self.tile, self.overlap, self.params = int(tile), int(overlap), params
        self._stream = RowContextStream(height, overlap, self._process)

    def _process(self, ctx, open_top, open_bottom, a, b):
        probs, image_chw = ctx
        image = np.moveaxis(image_chw, 0, -1)
        return [tiled_crf(image, probs, tile=self.tile, overlap=self.overlap, rows=(a, b), **self.params)]

    def push(self, row0: int, probs: np.ndarray, image: np.ndarray | None = None) -> list[tuple]:
        h = probs.shape[1]
        if image is None:
            if self.read_image is None:
                raise ValueError("CrfStripProcessor: give the image strip or a read_image callable")
            image = self.read_image(Window(row0, 0, h, self.width))
        image = _as_uint8_image(image)
        if image.shape[:2] != (h, self.width):
            raise ValueError(f"image strip {image.shape} does not match probs {probs.shape}")
        return self._stream.push(row0, probs, np.moveaxis(image, -1, 0))  # rows on axis -2 for the stream

    def finish(self) -> list[tuple]:
        return self._stream.finish()

    def __call__(self, strips: Iterable[tuple]) -> Iterator[tuple]:
        for item in strips:
            yield from self.push(*item)
        yield from self.finish()
