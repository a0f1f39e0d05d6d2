"""Pictures for the report: TP/FP/FN overlays of an image or tile, side by side, as PNG bytes.

Colours (the same in every panel and in the report's legend): true positive green, false
positive red (predicted, not in the truth), false negative blue (in the truth, missed). For
several classes a pixel counts as TP when both maps give it the same non-zero class; a wrong
class counts as FP and FN at once and is drawn red.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from segkit.ground.geometry import Window
from segkit.io.images.raster import open_raster
from segkit.evaluate.sources import EmptyLabels, EvalImage

TP_RGB, FP_RGB, FN_RGB = (40, 200, 70), (235, 50, 50), (50, 110, 255)
ALPHA = 0.5  # overlay opacity: the image stays visible under the colours
MAX_SIDE = 512  # display size of a panel's longer side (big items are downscaled)
MIN_SIDE = 256  # small items are enlarged (nearest) to at least this, so a person can read them
GAP = 6  # pixels between panels


def display_size(window: Window, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(h, w) of a panel showing `window`: longer side clamped into [min_side, max_side]."""
    longest = max(window.height, window.width)
    scale = min(1.0, max_side / longest) if longest > max_side else max(1.0, min_side / longest)
    return max(1, round(window.height * scale)), max(1, round(window.width * scale))


def to_display(raw: np.ndarray) -> np.ndarray:
    """HWC image of any dtype -> HW3 uint8, each channel stretched between its 1st and 99th percentiles
    (a 16-bit or float image shows its contrast; one channel shows grey, two or 4+ show the first ones)."""
    raw = np.asarray(raw, np.float32)
    raw = raw[..., None] if raw.ndim == 2 else raw
    channels = raw[..., :3] if raw.shape[-1] >= 3 else raw[..., :1].repeat(3, axis=-1)
    lo = np.percentile(channels, 1, axis=(0, 1))
    hi = np.percentile(channels, 99, axis=(0, 1))
    scaled = (channels - lo) / np.maximum(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def draw_overlay(rgb: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """rgb with TP / FP / FN pixels tinted (see the module docstring)."""
    out = rgb.astype(np.float32)
    p, t = pred != 0, truth != 0
    same = p & t & (pred == truth)
    for where, colour in ((same, TP_RGB), (p & ~same, FP_RGB), (t & ~p, FN_RGB)):
        out[where] = (1 - ALPHA) * out[where] + ALPHA * np.array(colour, np.float32)
    return out.astype(np.uint8)


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    col = 0
    for panel in panels:
        out[: panel.shape[0], col: col + panel.shape[1]] = panel
        col += panel.shape[1] + GAP
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


Opener = Callable[[EvalImage, object], Optional[object]]


@dataclass
class Pictures:
    """Draws items of the evaluated images: the image, then one overlay per prediction."""

    images: dict  # id -> EvalImage
    truth_for: Opener
    preds: dict  # prediction label -> Opener

    def panels(self, image_id: str, window: Window, labels: list[str]) -> bytes:
        image = self.images[image_id]
        size = display_size(window)
        with open_raster(image.image) as raster:
            rgb = to_display(raster.read(window, out_size=size))
            truth = self.truth_for(image, raster).read(window, size)
            panels = [rgb]
            for label in labels:
                source = self.preds[label](image, raster) or EmptyLabels()
                panels.append(draw_overlay(rgb, source.read(window, size), truth))
        return png_bytes(side_by_side(panels))
