"""Instance targets: body, border and contact masks derived per window from object ids.

The recipe of the 2018 Data Science Bowl and SpaceNet winners (e.g. the topcoders' DSB 2018
solution and Seferbekov's SpaceNet 4: a U-Net predicting the object body, its border and the
contact zone between touching objects, then a seeded watershed): per pixel,

- ``body``: inside any object;
- ``border``: inside an object and within ``border_px`` (euclidean disk) of a pixel that is not
  that object (background or another object): the band whose removal separates touching bodies;
- ``contact``: within ``contact_px`` of two different objects (background gaps included): where
  touching or nearly touching objects meet.

Targets are computed at source resolution on the window grown by ``context_px`` on every side,
then cropped and resized (nearest) to the network size: a border at the window's edge is the
object's real border, never the cut. Past the image the ids are padded like the image (0 with
constant padding, so an object touching the image edge has a border there).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.ground.targets import PRESETS, TARGET_NAMES, parse_targets  # re-exported
from segkit.io.images.window import resize_nearest

__all__ = ["TARGET_NAMES", "PRESETS", "TargetSpec", "parse_targets", "instance_targets", "read_targets"]


@dataclass(frozen=True)
class TargetSpec:
    """Which targets (``names``, one network output channel each, in this order) and their widths
    in source pixels (``border_px``: band inside each object; ``contact_px``: reach between objects)."""

    names: tuple
    border_px: int = 2
    contact_px: int = 2

    @property
    def context_px(self) -> int:
        """Source pixels read around a window so the targets at its edge see the objects beyond it."""
        return max(self.border_px, self.contact_px) + 1


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r).astype(np.uint8)


def instance_targets(ids: np.ndarray, names, *, border_px: int = 2, contact_px: int = 2) -> np.ndarray:
    """(len(names), h, w) uint8 0/1 targets of an (h, w) id map (see module doc).

    Pixels within the widths of the array's edge see only what is inside it: give the array with
    context around the part you keep (read_targets does).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"instance_targets: expected a 2-D id map, got shape {ids.shape}")
    # compact ids to 1..k so float32 (what cv2's max/min filters take) holds them exactly
    _, inverse = np.unique(ids, return_inverse=True)
    compact = inverse.reshape(ids.shape).astype(np.float32)
    if ids.min(initial=0) < 0:
        raise ValueError("instance_targets: ids must be >= 0")
    if not (ids == 0).any():  # no background: the smallest id is an object, not 0
        compact += 1
    body = compact > 0
    out = []
    for name in names:
        if name == "body":
            out.append(body)
        elif name == "border":
            k = _disk(border_px)
            other = (cv2.dilate(compact, k) != compact) | (cv2.erode(compact, k) != compact)
            out.append(body & other)
        elif name == "contact":
            k = _disk(contact_px)
            big = np.float32(2 ** 24)
            lowest = cv2.erode(np.where(body, compact, big), k)
            out.append((lowest < big) & (lowest != cv2.dilate(compact, k)))
        else:
            raise ValueError(f"instance_targets: unknown target {name!r}; valid: {', '.join(TARGET_NAMES)}")
    return np.stack(out).astype(np.uint8)


def read_targets(source, window: Window, spec: TargetSpec, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """(h, w, T) uint8 targets of ``window`` (source pixels) from an instance source
    (segkit.io.labels.instances: ``read_instances``), resized to ``out_size`` by nearest.

    HWC because augmentation takes masks that way; the dataset turns it to CHW.
    """
    if not hasattr(source, "read_instances"):
        raise SegkitError(f"{getattr(source, 'path', source)}: data.targets needs instance labels (an id raster, "
                          "polygons or per-object RLE rows)")
    m = spec.context_px
    r0, c0, h, w = (int(v) for v in window)
    ids = source.read_instances(Window(r0 - m, c0 - m, h + 2 * m, w + 2 * m))
    targets = instance_targets(ids, spec.names, border_px=spec.border_px, contact_px=spec.contact_px)
    targets = np.ascontiguousarray(targets[:, m:m + h, m:m + w].transpose(1, 2, 0))
    return targets if out_size is None else resize_nearest(targets, out_size)
