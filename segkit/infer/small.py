"""Many small images per forward pass: an image no larger than one tile is one tile.

The tiled predictor (segkit.infer.predict) runs one image at a time; a contest's thousands of
256 px PNGs would then cost one forward pass each. Here images whose region fits in fov_px are
read as one window each (``pad``: the fov_px window at the region's origin, as the tiled
predictor reads it; ``resize``: the region itself, stretched to size), batched across images,
and each prediction resized back and cropped to its region. With ``pad`` the result is the
tiled predictor's for that image (one tile, its blend weight divided out).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Callable, Hashable, Iterable, Iterator

import numpy as np
import torch

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.predict import resize_probs
from segkit.runs.device import infer_batch_size

SMALL_MODES = ("pad", "resize")


def fits(region: Window, fov_px: int, margin_px: int = 0) -> bool:
    """Whether a region is predicted whole: it fits in one tile (and no context margin is asked)."""
    return int(margin_px) == 0 and region.height <= int(fov_px) and region.width <= int(fov_px)


def small_window(region: Window, fov_px: int, mode: str = "pad") -> Window:
    """The window read for a small region: fov_px square at its origin (pad) or the region (resize)."""
    if mode not in SMALL_MODES:
        raise SegkitError(f"small_images {mode!r}: unknown, valid: {', '.join(SMALL_MODES)}")
    return region if mode == "resize" else Window(region.row, region.col, int(fov_px), int(fov_px))


def _read(chunk: list, fov_px: int, size: int, preprocess: Callable, mode: str) -> torch.Tensor:
    """NCHW float32 of one chunk of (key, raster, region) (runs on the reader thread)."""
    tiles = []
    for _, raster, region in chunk:
        image = preprocess(raster.read(small_window(region, fov_px, mode), out_size=(size, size)))
        tiles.append(image[:, :, None] if image.ndim == 2 else image)
    return torch.from_numpy(np.stack(tiles).astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def predict_small(predictor: Callable[[torch.Tensor], torch.Tensor],
                  items: Iterable[tuple[Hashable, object, Window]], *, fov_px: int, size: int,
                  preprocess: Callable[[np.ndarray], np.ndarray], batch_size: int | None = None,
                  device="cpu", mode: str = "pad") -> Iterator[tuple[Hashable, np.ndarray]]:
    """Yield (key, probs float32 (C, region height, region width)) per item, in order.

    items: (key, raster, region) with each region fitting in fov_px (see :func:`fits`); read lazily,
        so a generator over 100,000 images holds one batch at a time.
    predictor: float32 NCHW batch on ``device`` -> NCHW probabilities (EnsemblePredictor); fov_px /
        size: source pixels of a tile and pixels the network sees; preprocess: raw HWC -> float32 HWC;
        batch_size: images per forward pass (None: by device); mode: pad | resize (data.small_images).
    Reading runs one batch ahead on a background thread, as in the tiled predictor.
    """
    # why: the tiled predictor's keywords (MONAI's sliding_window_inference style), plus the small-image mode
    device = torch.device(device)
    batch_size = infer_batch_size(batch_size, device)
    fov_px, size = int(fov_px), int(size)
    iterator = iter(items)
    prepared = predictor.prepared(device) if hasattr(predictor, "prepared") else contextlib.nullcontext()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segkit-read-small")
    try:
        with prepared:
            chunk = list(islice(iterator, batch_size))
            pending = pool.submit(_read, chunk, fov_px, size, preprocess, mode) if chunk else None
            while chunk:
                x = pending.result()
                following = list(islice(iterator, batch_size))
                if following:
                    pending = pool.submit(_read, following, fov_px, size, preprocess, mode)
                out = predictor(x.to(device).contiguous(memory_format=torch.channels_last))
                probs = (out[0] if isinstance(out, tuple) else out).float()
                if isinstance(out, tuple):  # a gate: an image it does not keep stays 0, as its tile would
                    probs = probs * out[1].to(probs.dtype).reshape(-1, 1, 1, 1)
                if mode == "pad":
                    probs = resize_probs(probs, (fov_px, fov_px)).cpu()
                for index, (key, _, region) in enumerate(chunk):
                    if mode == "pad":
                        one = probs[index, :, :region.height, :region.width]
                    else:
                        one = resize_probs(probs[index:index + 1], (region.height, region.width))[0].cpu()
                    yield key, np.ascontiguousarray(one.numpy(), dtype=np.float32)
                chunk = following
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
