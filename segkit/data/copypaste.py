"""Object copy-paste for semantic masks: an object bank + a transform that pastes objects into windows.

ObjectBank gathers connected components per class (cv2.connectedComponentsWithStats) from labelled
windows, each with its pixels, a few pixels of real surroundings (``margin``) and its own object
mask. CopyPaste draws N objects (class-aware), flips / scales / rotates each, places it fully inside
the window at a random position and blends it with a Gaussian-blurred alpha:
``image = alpha * object + (1 - alpha) * image``; the mask takes the object's class where
alpha >= 0.5, so pasted objects occlude whatever lay under them. The common implementations need
instance boxes; this one only needs a class-id mask.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from segkit.ground.errors import SegkitError


@dataclass
class BankObject:
    # (h, w, C + 1) float32: the object's crop plus `margin` pixels of its surroundings, and as the
    # last channel its 0/1 mask (this component only, 0 on the crop's outer ring) - one array so
    # one warpAffine moves pixels and alpha together.
    pixels: np.ndarray
    cls: int
    area: int

    @property
    def image(self) -> np.ndarray:
        return self.pixels[..., :-1]

    @property
    def mask(self) -> np.ndarray:
        return self.pixels[..., -1]


class ObjectBank:
    """Objects per class, cut from (image HWC, mask HW class ids) windows; class 0 is background.

    Components smaller than ``min_px`` (noise) or larger than ``max_px`` / ``max_side`` (regions, not
    objects) are skipped, as are components touching the window edge (cut, so their outline would
    be a straight line) unless ``keep_cut``. At most ``max_per_class`` objects are kept per class by
    reservoir sampling (a uniform sample of everything added), which bounds memory: about
    max_per_class * max_side**2 * C * 4 bytes per class in the worst case.
    """

    def __init__(self, *, min_px: int = 16, max_px: int | None = None, max_side: int | None = 128,
                 max_per_class: int = 200, margin: int = 4, keep_cut: bool = False, seed: int = 0):
        self.min_px, self.max_px, self.max_side = min_px, max_px, max_side
        self.max_per_class, self.margin, self.keep_cut = max_per_class, margin, keep_cut
        self.objects: dict[int, list[BankObject]] = {}
        self.seen: dict[int, int] = {}
        self.channels: int | None = None
        self.version = 0  # bumped on every change so CopyPaste refreshes its class weights
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_samples(cls, samples: Iterable[tuple[np.ndarray, np.ndarray]], **kwargs) -> "ObjectBank":
        bank = cls(**kwargs)
        for image, mask in samples:
            bank.add(image, mask)
        return bank

    def __len__(self) -> int:
        return sum(len(v) for v in self.objects.values())

    def counts(self) -> dict[int, int]:
        return {c: len(v) for c, v in sorted(self.objects.items())}

    def add(self, image: np.ndarray, mask: np.ndarray) -> int:
        """Add the objects of one window; returns how many were kept."""
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[:2] != mask.shape[:2]:
            raise SegkitError(f"object bank: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        if self.channels is None:
            self.channels = image.shape[-1]
        elif image.shape[-1] != self.channels:
            raise SegkitError(f"object bank: window has {image.shape[-1]} channels, the bank holds {self.channels}")
        height, width = mask.shape[:2]
        kept = 0
        for cls in np.unique(mask):
            if cls == 0:
                continue
            n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == cls).astype(np.uint8), connectivity=8)
            for k in range(1, n):
                x, y, w, h, area = (int(v) for v in stats[k])
                if area < self.min_px or (self.max_px is not None and area > self.max_px):
                    continue
                if self.max_side is not None and max(w, h) > self.max_side:
                    continue
                if not self.keep_cut and (x == 0 or y == 0 or x + w == width or y + h == height):
                    continue
                r0, c0 = max(0, y - self.margin), max(0, x - self.margin)
                r1, c1 = min(height, y + h + self.margin), min(width, x + w + self.margin)
                pixels = np.concatenate([image[r0:r1, c0:c1].astype(np.float32),
                                         (labels[r0:r1, c0:c1] == k).astype(np.float32)[..., None]], axis=2)
                if r0 == y or c0 == x or r1 == y + h or c1 == x + w:
                    # object on the crop edge (cut or no margin): a ring of alpha 0 keeps replicated borders clean
                    pixels = cv2.copyMakeBorder(pixels, 1, 1, 1, 1, cv2.BORDER_REPLICATE).reshape(
                        pixels.shape[0] + 2, pixels.shape[1] + 2, -1)
                    pixels[[0, -1], :, -1] = 0
                    pixels[:, [0, -1], -1] = 0
                kept += self._keep(BankObject(pixels, int(cls), area))
        return kept

    def _keep(self, obj: BankObject) -> int:
        items = self.objects.setdefault(obj.cls, [])
        seen = self.seen.get(obj.cls, 0)
        self.seen[obj.cls] = seen + 1
        if len(items) < self.max_per_class:
            items.append(obj)
        else:  # reservoir sampling: every object seen so far is kept with the same probability
            j = int(self._rng.integers(seen + 1))
            if j >= self.max_per_class:
                return 0
            items[j] = obj
        self.version += 1
        return 1


def _range(value, name: str, symmetric: bool = False) -> tuple[float, float]:
    """A number or [lo, hi] -> (lo, hi); with ``symmetric`` a number r means (-r, r)."""
    if isinstance(value, (int, float)):
        return (-abs(value), abs(value)) if symmetric else (float(value), float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and float(value[0]) <= float(value[1]):
        return float(value[0]), float(value[1])
    raise SegkitError(f"copy_paste.{name}: expected a number or [low, high] with low <= high, got {value!r}")


class CopyPaste:
    """Paste ``count`` bank objects into a window with probability ``p``.

    count: int or [lo, hi] (inclusive); scale: factor or [lo, hi]; rotate: degrees r (uniform in
    [-r, r]) or [lo, hi]; hflip/vflip: random flips; blur_sigma: Gaussian sigma of the alpha edge
    (0 = hard edge). class_weights picks the class of each pasted object: None / "inverse"
    (default: P(class) proportional to 1 / its object count in the bank, so rare classes are pasted
    most), "balanced" (every class equally often), "frequency" (as often as they occur), or
    {class_id: weight} (classes not listed are not pasted).
    An object too large for the window is shrunk to fit. An empty bank warns once, then does nothing.
    """

    def __init__(self, bank: ObjectBank, p: float = 0.5, count=(1, 3), scale=(0.8, 1.25), rotate=30.0,
                 hflip: bool = True, vflip: bool = True, class_weights=None, blur_sigma: float = 1.0,
                 seed: int | None = None):
        # why: keyword options of the transform (probability, counts, scales, ...) as its users set them in
        # data.copy_paste.
        if not 0 <= p <= 1:
            raise SegkitError(f"copy_paste.p: expected a probability in [0, 1], got {p!r}")
        self.bank, self.p = bank, float(p)
        lo, hi = _range(count, "count")
        if lo < 0 or lo != int(lo) or hi != int(hi):
            raise SegkitError(f"copy_paste.count: expected a count >= 0 or [low, high] of counts, got {count!r}")
        self.count = (int(lo), int(hi))
        self.scale = _range(scale, "scale")
        if self.scale[0] <= 0:
            raise SegkitError(f"copy_paste.scale: factors must be > 0, got {scale!r}")
        self.rotate = _range(rotate, "rotate", symmetric=True)
        self.hflip, self.vflip = bool(hflip), bool(vflip)
        if isinstance(class_weights, str) and class_weights not in ("inverse", "balanced", "frequency"):
            raise SegkitError(f"copy_paste.class_weights: expected 'inverse', 'balanced', 'frequency' or {{class: weight}}, got {class_weights!r}")
        self.class_weights = class_weights
        if blur_sigma < 0:
            raise SegkitError(f"copy_paste.blur_sigma: must be >= 0, got {blur_sigma!r}")
        self.blur_sigma = float(blur_sigma)
        self.rng = np.random.default_rng(seed)
        self._warned = False
        self._weights_for = None  # (bank version, classes, probabilities)

    def reseed(self, seed) -> None:
        self.rng = np.random.default_rng(seed)

    def _class_probs(self) -> tuple[list[int], np.ndarray]:
        if self._weights_for is not None and self._weights_for[0] == self.bank.version:
            return self._weights_for[1], self._weights_for[2]
        counts = {c: n for c, n in self.bank.counts().items() if n > 0}
        classes = sorted(counts)
        if self.class_weights in (None, "inverse"):
            w = np.array([1.0 / counts[c] for c in classes])
        elif self.class_weights == "balanced":
            w = np.ones(len(classes))
        elif self.class_weights == "frequency":
            w = np.array([float(counts[c]) for c in classes])
        else:
            weights = {int(k): float(v) for k, v in dict(self.class_weights).items()}
            w = np.array([weights.get(c, 0.0) for c in classes])
        if not (w > 0).any():
            raise SegkitError(f"copy_paste.class_weights: no class of the bank ({classes}) has a weight > 0")
        probs = w / w.sum()
        self._weights_for = (self.bank.version, classes, probs)
        return classes, probs

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.p <= 0 or self.rng.random() >= self.p:
            return image, mask
        if len(self.bank) == 0:
            if not self._warned:
                warnings.warn("copy_paste: the object bank is empty (no labelled objects found); copy-paste does nothing",
                              stacklevel=2)
                self._warned = True
            return image, mask
        grey = image.ndim == 2
        work = image[..., None] if grey else image
        if work.shape[-1] != self.bank.channels:
            raise SegkitError(f"copy_paste: window has {work.shape[-1]} channels but the object bank holds {self.bank.channels}")
        out = work.astype(np.float32, copy=True)
        mask = mask.copy()
        classes, probs = self._class_probs()
        for _ in range(int(self.rng.integers(self.count[0], self.count[1] + 1))):
            items = self.bank.objects[classes[int(self.rng.choice(len(classes), p=probs))]]
            self._paste(out, mask, items[int(self.rng.integers(len(items)))])
        if image.dtype != np.float32:
            out = np.clip(np.rint(out), *_limits(image.dtype)) if image.dtype.kind in "ui" else out
            out = out.astype(image.dtype)
        return (out[..., 0] if grey else out), mask

    def _paste(self, image: np.ndarray, mask: np.ndarray, obj: BankObject) -> None:
        """Blend one object into image/mask in place at a random position fully inside the window."""
        height, width = mask.shape
        src = obj.pixels
        hflip = self.hflip and self.rng.random() < 0.5
        vflip = self.vflip and self.rng.random() < 0.5
        scale = self.rng.uniform(*self.scale)
        angle = self.rng.uniform(*self.rotate)
        pad = int(math.ceil(3 * self.blur_sigma)) + 1  # room for the blurred edge to fall to ~0
        h, w = src.shape[:2]
        cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        bw, bh = w * cos + h * sin, w * sin + h * cos  # bounding box of the rotated crop at scale 1
        fit = min((width - 2 * pad) / bw, (height - 2 * pad) / bh)
        if fit <= 0:
            return
        scale = min(scale, fit)  # too large for the window: shrink to fit
        if scale * scale * obj.area < 4:  # window too small to hold a recognisable copy
            return
        out_w, out_h = int(math.ceil(bw * scale)) + 2 * pad, int(math.ceil(bh * scale)) + 2 * pad
        # same parity as the crop: its centre lands on a pixel centre (no half-pixel blur at scale 1)
        out_w, out_h = min(out_w + (out_w - w) % 2, width), min(out_h + (out_h - h) % 2, height)
        if angle == 0 and scale == 1:  # exact copy, no resampling
            src = src[::-1 if vflip else 1, ::-1 if hflip else 1]
            t, l = (out_h - h) // 2, (out_w - w) // 2
            # replicate is right for alpha too: the crop's outer ring has alpha 0
            patch = cv2.copyMakeBorder(np.ascontiguousarray(src), t, out_h - h - t, l, out_w - w - l,
                                       cv2.BORDER_REPLICATE)
        else:
            # flips folded into the affine matrix: no flipped copies of the crop
            flip = np.array([[-1.0 if hflip else 1.0, 0, (w - 1) if hflip else 0],
                             [0, -1.0 if vflip else 1.0, (h - 1) if vflip else 0], [0, 0, 1]])
            m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
            m[0, 2] += (out_w - 1) / 2 - (w - 1) / 2
            m[1, 2] += (out_h - 1) / 2 - (h - 1) / 2
            m = m @ flip
            patch = cv2.warpAffine(src, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        patch = patch.reshape(out_h, out_w, -1)
        soft = np.ascontiguousarray(patch[..., -1])
        if self.blur_sigma > 0:
            soft = cv2.GaussianBlur(soft, (0, 0), self.blur_sigma, borderType=cv2.BORDER_CONSTANT)
        row = int(self.rng.integers(0, height - out_h + 1))
        col = int(self.rng.integers(0, width - out_w + 1))
        region = image[row:row + out_h, col:col + out_w]
        delta = patch[..., :-1] - region
        delta *= soft[..., None]
        region += delta  # alpha * object + (1 - alpha) * image
        mask[row:row + out_h, col:col + out_w][soft >= 0.5] = obj.cls


def _limits(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max


_COPY_PASTE_KEYS = ("p", "count", "scale", "rotate", "hflip", "vflip", "class_weights", "blur_sigma", "seed")
_BANK_KEYS = ("min_px", "max_px", "max_side", "max_per_class", "margin", "keep_cut")


def split_copy_paste_config(config: dict) -> tuple[dict, dict]:
    """Split a ``copy_paste:`` config mapping into (CopyPaste kwargs, ObjectBank kwargs); unknown keys are errors."""
    if not isinstance(config, dict):
        raise SegkitError(f"copy_paste: expected a mapping, got {config!r}")
    valid = _COPY_PASTE_KEYS + _BANK_KEYS + ("order",)
    for key in config:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise SegkitError(f"copy_paste: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")
    return ({k: v for k, v in config.items() if k in _COPY_PASTE_KEYS},
            {k: v for k, v in config.items() if k in _BANK_KEYS})


def create_copy_paste(config: dict, bank: ObjectBank) -> CopyPaste:
    """CopyPaste from a ``copy_paste:`` config mapping (bank keys, if any, are ignored here)."""
    kwargs, _ = split_copy_paste_config(config)
    return CopyPaste(bank, **kwargs)
