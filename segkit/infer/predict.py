"""The streaming tiled predictor shared by `segkit infer` and validation during training.

Tiles of fov_px x fov_px source pixels (even grid, overlap_px) are read at `size` x `size`,
run through every model under every TTA view, averaged with weights, resized back to fov_px,
blended into a StripAccumulator, and finished row strips are yielded as soon as no later tile
can touch them. Reading runs one batch ahead on a background thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from segkit.data.windows import grid_windows
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, clip_region, normalise_weights
from segkit.infer.tiling import StripAccumulator, blend_weights
from segkit.infer.tta import augment, deaugment, parse_tta
from segkit.runs.device import autocast

ACTIVATIONS = ("sigmoid", "softmax", "identity")


def _activate(out: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation == "softmax":
        return torch.softmax(out, dim=1)
    if activation in (None, "identity", "none"):
        return out
    raise SegkitError(f"activation {activation!r}: valid: {', '.join(ACTIVATIONS)}")


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):  # torchvision-style {"out": ...}
        out = out["out"]
    elif isinstance(out, (tuple, list)):  # smp aux heads: (mask, label)
        out = out[0]
    return out


def predict_batch(models, x: torch.Tensor, tta, *, activation="sigmoid", amp=False,
                  average="probs") -> torch.Tensor:
    """Weighted average over models x views of one NCHW batch -> probs float32 (N, C, H, W).

    models and tta are (item, weight) lists with normalised weights. average="probs" averages
    after the activation (default); "logits" averages raw outputs and activates once.
    """
    if average not in ("probs", "logits"):
        raise SegkitError(f"tta average {average!r}: valid: probs, logits")
    total = None
    with torch.inference_mode(), autocast(x.device, amp):
        for model, m_weight in models:
            for view, v_weight in tta:
                out = deaugment(_forward(model, augment(x, view)), view).float()
                if average == "probs":
                    out = _activate(out, activation)
                out = out * (m_weight * v_weight)
                total = out if total is None else total + out
    if average == "logits":
        total = _activate(total, activation)
    return total.float()


def _weighted(pairs: Sequence[tuple[object, float]], what: str) -> list[tuple[object, float]]:
    """(item, weight) pairs with the weights normalised to sum to 1."""
    weights = normalise_weights([w for _, w in pairs], len(pairs), what) if pairs else []
    return [(item, w) for (item, _), w in zip(pairs, weights)]


def _resize(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) -> (C, height, width), bilinear; cv2 resizes HWC with up to 512 channels at once."""
    if probs.shape[1:] == (height, width):
        return probs
    chans = [probs[i:i + 512].transpose(1, 2, 0) for i in range(0, probs.shape[0], 512)]
    out = [cv2.resize(np.ascontiguousarray(c), (width, height), interpolation=cv2.INTER_LINEAR) for c in chans]
    out = [o[:, :, None] if o.ndim == 2 else o for o in out]
    return np.concatenate(out, axis=2).transpose(2, 0, 1)


def _read_batch(raster, windows: list[Window], size: int, fov_px: int, preprocess) -> np.ndarray:
    """(N, size, size, C) float32 from raw reads (runs on the reader thread).

    NHWC is channels_last memory already: the tensor is a permuted view, no copy.
    """
    out_size = None if size == fov_px else (size, size)
    tiles = []
    for w in windows:
        img = preprocess(raster.read(w, out_size=out_size))
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[:2] != (size, size):
            raise SegkitError(f"{getattr(raster, 'path', 'raster')}: tile {tuple(w)} read as {img.shape}, "
                              f"expected ({size}, {size}, C)")
        tiles.append(img)
    return np.stack(tiles).astype(np.float32, copy=False)


def _has_tissue(w: Window, mask: np.ndarray, scale: float) -> bool:
    """Any True mask pixel under window w (source px); the cell range is rounded outwards."""
    r0, c0 = max(int(w.row // scale), 0), max(int(w.col // scale), 0)
    r1, c1 = int(-(-w.bottom // scale)), int(-(-w.right // scale))
    return bool(mask[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)].any())


def _output_channels(models, raster, size, preprocess, device, amp, activation) -> int:
    """Channel count of the ensemble's output (one forward on a blank tile)."""
    raw = np.zeros((size, size, int(raster.channels)), dtype=raster.dtype)
    img = preprocess(raw)
    img = img[:, :, None] if img.ndim == 2 else img
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)).to(device)
    return int(predict_batch(models[:1], x, [("identity", 1.0)], activation=activation, amp=amp).shape[1])


def predict_strips(
    models: Sequence[tuple[nn.Module, float]],
    raster,
    *,
    fov_px: int,
    size: int,
    overlap_px: int,
    preprocess: Callable[[np.ndarray], np.ndarray],
    tta: Sequence[tuple[str, float]] = (("identity", 1.0),),
    blend: str = "gaussian",
    batch_size: int = 8,
    device="cpu",
    amp: bool = False,
    activation: str | None = "sigmoid",
    region: Window | None = None,
    progress: bool = False,
    average: str = "probs",
    margin_px: int = 0,
    tissue: tuple[np.ndarray, float] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (row0 within the region, probs float32 (C, h, region width)) strips, top to bottom.

    models: (module, weight) pairs; tta: (view, weight) pairs or a parse_tta spec string; weights
    are normalised. region is clipped to the image; strips cover exactly the clipped region.
    average: "probs" (activate each view, then average) or "logits" (average, then activate).
    margin_px: context margin; each fov_px tile is predicted but only its centre
    (fov_px - 2 * margin_px) is kept and blended, the grid being laid out for the centres.
    tissue: (bool mask, source px per mask px), e.g. from a thumbnail: tiles whose kept part holds
    no True pixel of the mask are not run (their pixels stay 0 unless another tile covers them).
    The models are switched to eval mode and channels_last on `device` while the generator runs;
    their train/eval mode is restored when it finishes or is closed.
    """
    if not models:
        raise SegkitError("predict: no models given")
    fov_px, size, overlap_px, batch_size = int(fov_px), int(size), int(overlap_px), int(batch_size)
    if size <= 0 or batch_size <= 0:
        raise SegkitError(f"predict: size ({size}) and batch_size ({batch_size}) must be positive")
    models = _weighted(list(models), "models")
    tta = _weighted(parse_tta(tta) if tta is None or isinstance(tta, str) else list(tta), "tta")
    device = torch.device(device)
    reg = clip_region(int(raster.height), int(raster.width), region)
    margin_px = int(margin_px)
    core = fov_px - 2 * margin_px
    if margin_px < 0 or core <= 0:
        raise SegkitError(f"margin_px {margin_px}: must be >= 0 and leave a centre (fov_px {fov_px} - 2 x margin > 0)")
    windows = grid_windows(raster.height, raster.width, core, overlap_px, region=reg)
    if tissue is not None:
        windows = [w for w in windows if _has_tissue(w, *tissue)]
    weights = blend_weights(core, core, blend)
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    reads = [[Window(w.row - margin_px, w.col - margin_px, fov_px, fov_px) for w in b] for b in batches]
    keep = slice(margin_px, margin_px + core)
    was_training = [m.training for m, _ in models]
    for m, _ in models:
        m.eval().to(device=device, memory_format=torch.channels_last)
    acc = None
    bar = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segkit-read")
    try:
        if not batches:  # nothing to run (no tissue): all zeros
            channels = _output_channels(models, raster, size, preprocess, device, amp, activation)
            yield from StripAccumulator(channels, reg.height, reg.width).finish_iter()
            return
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(windows), unit="tile", desc=Path(str(getattr(raster, "path", "predict"))).name,
                       leave=False, dynamic_ncols=True)
        nxt = pool.submit(_read_batch, raster, reads[0], size, fov_px, preprocess)
        for i, batch in enumerate(batches):
            arr = nxt.result()
            if i + 1 < len(batches):  # read the next batch while the models run on this one
                nxt = pool.submit(_read_batch, raster, reads[i + 1], size, fov_px, preprocess)
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)
            probs = predict_batch(models, x, tta, activation=activation, amp=amp, average=average)
            probs = probs.cpu().numpy()
            if acc is None:
                acc = StripAccumulator(probs.shape[1], reg.height, reg.width)
            for w, p in zip(batch, probs):
                p = _resize(p, fov_px, fov_px)[:, keep, keep]
                local = Window(w.row - reg.row, w.col - reg.col, w.height, w.width)
                yield from acc.add_iter(local, p, weights)
            if bar is not None:
                bar.update(len(batch))
        yield from acc.finish_iter()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        for (m, _), training in zip(models, was_training):
            m.train(training)


def predict_probs(models, raster, **kwargs) -> np.ndarray:
    """predict_strips concatenated: (C, H, W) float32 of the region (small images / validation)."""
    strips = [s for _, s in predict_strips(models, raster, **kwargs)]
    return np.concatenate(strips, axis=1)
