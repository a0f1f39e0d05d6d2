"""Pure window geometry: no I/O, no torch.

One Window type is used everywhere in segkit; all values are source pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, clip_region

# ---------------------------------------------------------------------------
# Grid windows (evaluation / inference)
# ---------------------------------------------------------------------------


def grid_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: first 0, last ``length - tile``, steps as equal as possible.

    The number of tiles is the smallest one whose steps are all <= ``tile - overlap``; the
    spare overlap is spread evenly (steps differ by at most one pixel) instead of piling up in
    a last tile that hangs past the border.  ``[0]`` when the tile covers the whole length.
    """
    length, tile, overlap = int(length), int(tile), int(overlap)
    if tile <= 0:
        raise SegkitError(f"tile: must be a positive number of pixels, got {tile}")
    if overlap < 0 or overlap >= tile:
        raise SegkitError(f"overlap: must be in [0, tile) = [0, {tile}), got {overlap}")
    if length <= 0:
        raise SegkitError(f"length: must be positive, got {length}")
    if length <= tile:
        return [0]
    span = length - tile
    stride = tile - overlap
    n_steps = -(-span // stride)  # ceil: fewest steps that keep every step <= stride
    # floor(i * span / n_steps): consecutive differences are floor or ceil of span / n_steps <= stride
    return [i * span // n_steps for i in range(n_steps + 1)]


def grid_windows(
    height: int, width: int, tile: int, overlap: int, region: Window | None = None
) -> list[Window]:
    """tile x tile windows (row-major) covering every pixel of the image, or of ``region``.

    The region is clipped to the image.  When it is smaller than the tile the single window
    starts at its origin and extends past it (readers pad).
    """
    if height <= 0 or width <= 0:
        raise SegkitError(f"image size: must be positive, got {height}x{width}")
    reg = clip_region(height, width, region)
    rows = grid_starts(reg.height, tile, overlap)
    cols = grid_starts(reg.width, tile, overlap)
    return [Window(reg.row + r, reg.col + c, int(tile), int(tile)) for r in rows for c in cols]


# ---------------------------------------------------------------------------
# Tissue / valid-area mask from a low-resolution thumbnail
# ---------------------------------------------------------------------------

TISSUE_METHODS = ("saturation", "otsu", "none")
# Saturation threshold bounds: Otsu picks the split, these keep it sane when the thumbnail is
# all glass (Otsu would split noise) or all tissue (Otsu would split the tissue in two).
_SAT_MIN, _SAT_MAX = 0.05, 0.15


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of a float array, through OpenCV on a 256-level rescale (any dtype in)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    scaled = np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    thr, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + float(thr) * (hi - lo) / 255.0


def _cleanup(mask: np.ndarray) -> np.ndarray:
    """Remove specks and close small gaps; the kernel grows with the thumbnail.

    A square kernel keeps straight edges and corners (rectangular valid areas of mosaics) exact.
    """
    k = max(3, (min(mask.shape) // 200) | 1)
    kernel = np.ones((k, k), dtype=np.uint8)
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    cleaned = m.astype(bool)
    # tiny thumbnails: never let the clean-up erase every detected pixel
    return cleaned if cleaned.any() or not mask.any() else mask


def tissue_mask(thumb: np.ndarray, method: str = "saturation") -> np.ndarray:
    """Bool HW mask of the area worth sampling, from a low-res HW or HWC thumbnail of any dtype.

    - ``saturation``: HSV saturation (max-min)/max of RGB, thresholded by Otsu clipped to
      [0.05, 0.15]: stained tissue is coloured, glass and background are grey.  Thumbnails with
      fewer than 3 channels have no saturation and use ``otsu``.
    - ``otsu``: Otsu on the grey level (channel mean); the side that covers most of the
      thumbnail border is background, so bright glass (brightfield) and black nodata
      (fluorescence, aerial mosaics) both work.
    - ``none``: everything.
    A constant thumbnail has nothing to separate and gives an empty mask (otsu/saturation).
    """
    if method not in TISSUE_METHODS:
        raise SegkitError(f"tissue method {method!r}: unknown, valid: {', '.join(TISSUE_METHODS)}")
    img = np.asarray(thumb)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise SegkitError(f"thumbnail: expected HW or HWC array, got shape {np.shape(thumb)}")
    if method == "none":
        return np.ones(img.shape[:2], dtype=bool)
    img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)  # nodata NaNs
    if method == "saturation" and img.shape[2] >= 3:
        rgb = img[:, :, :3]
        mx, mn = rgb.max(axis=2), rgb.min(axis=2)
        sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0).astype(np.float32)
        sat = cv2.medianBlur(sat, 3) if min(sat.shape) >= 3 else sat
        thr = min(max(_otsu(sat), _SAT_MIN), _SAT_MAX)
        mask = sat > thr
    else:
        grey = img.mean(axis=2)
        if float(grey.max()) <= float(grey.min()):
            return np.zeros(grey.shape, dtype=bool)
        thr = _otsu(grey)
        bright = grey > thr
        border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
        mask = ~bright if border.mean() > 0.5 else bright
    return _cleanup(mask)


# ---------------------------------------------------------------------------
# Random windows (training)
# ---------------------------------------------------------------------------


@dataclass
class SamplingArea:
    """One image as the sampler sees it: sizes in source pixels, masks on a low-res grid.

    Grid pixel (i, j) covers source rows [i*scale, (i+1)*scale) and the same for columns.
    ``usable`` None means the whole region is usable; ``foreground`` None means no labels
    (every draw is then uniform).  ``region`` None means the whole image.
    """

    height: int
    width: int
    region: Window | None = None
    usable: np.ndarray | None = None
    scale: float = 1.0
    foreground: np.ndarray | None = None
    weight: float = 1.0  # the manifest row's weight: draws come in proportion to area x weight


def _grid_cells(grid: np.ndarray, scale: float, reg: Window) -> np.ndarray:
    """Flat indices of the True cells of ``grid`` that overlap the region."""
    g = np.asarray(grid, dtype=bool)
    if g.ndim != 2:
        raise SegkitError(f"sampling grid: expected a 2-D bool array, got shape {g.shape}")
    inside = np.zeros_like(g)
    r0, c0 = int(np.floor(reg.row / scale)), int(np.floor(reg.col / scale))
    r1, c1 = int(np.ceil(reg.bottom / scale)), int(np.ceil(reg.right / scale))
    inside[r0:r1, c0:c1] = True
    return np.flatnonzero(g & inside)


SMALL_IMAGE_MODES = ("pad", "resize")


@dataclass
class AreaColumns:
    """Many images as the sampler sees them, in columns: ``height``/``width`` (n,) source pixels,
    ``region`` (n, 4) row, col, height, width (-1: the whole image), ``grids`` the few areas that
    carry usable/foreground grids (index -> SamplingArea); every other area is sampled uniformly."""

    height: np.ndarray
    width: np.ndarray
    region: np.ndarray
    grids: dict

    @classmethod
    def from_areas(cls, areas: list[SamplingArea]) -> "AreaColumns":
        region = [tuple(a.region) if a.region is not None else (-1, -1, -1, -1) for a in areas]
        return cls(np.array([a.height for a in areas], np.int64), np.array([a.width for a in areas], np.int64),
                   np.array(region, np.int64).reshape(-1, 4),
                   {i: a for i, a in enumerate(areas) if a.usable is not None or a.foreground is not None})


class _Prepared:
    """Per-area arrays of an area with grids, computed once: usable cells, foreground cells, weight."""

    def __init__(self, index: int, area: SamplingArea, region: Window):
        self.index = index
        self.region = region
        self.scale = float(area.scale)
        if not self.scale > 0:
            raise SegkitError(f"sampling area {index}: scale must be > 0, got {area.scale}")
        if area.usable is None:
            self.usable_shape, self.usable = None, None
            self.weight = float(self.region.height * self.region.width)
        else:
            self.usable_shape = np.shape(area.usable)
            self.usable = _grid_cells(area.usable, self.scale, self.region)
            # cells straddling the region edge count whole: an approximation at thumbnail scale
            self.weight = float(self.usable.size) * self.scale**2
        if not float(area.weight) > 0:
            raise SegkitError(f"sampling area {index}: weight must be > 0, got {area.weight}")
        self.weight *= float(area.weight)
        if area.foreground is None:
            self.fg_shape, self.fg = None, np.empty(0, dtype=np.intp)
        else:
            self.fg_shape = np.shape(area.foreground)
            self.fg = _grid_cells(area.foreground, self.scale, self.region)


def _clipped_regions(columns: AreaColumns) -> np.ndarray:
    """(n, 4) regions clipped to their images (the whole image without one); zero size when outside."""
    h, w, reg = columns.height, columns.width, columns.region
    has = reg[:, 0] >= 0
    r0, c0 = np.where(has, np.minimum(reg[:, 0], h), 0), np.where(has, np.minimum(reg[:, 1], w), 0)
    r1 = np.where(has, np.minimum(reg[:, 0] + reg[:, 2], h), h)
    c1 = np.where(has, np.minimum(reg[:, 1] + reg[:, 3], w), w)
    return np.stack([r0, c0, np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)], axis=1)


class RandomWindowSampler:
    """Random fov_px x fov_px windows over several images.

    Each draw: an image chosen in proportion to its usable area times its weight; with probability
    ``foreground_share`` (and when the image has labelled pixels) the window is centred on a
    random labelled grid pixel, moved by a uniform jitter of up to ``jitter * fov_px`` per axis
    (<= fov/2, so the labelled pixel stays inside); otherwise centred on a uniform point of the
    usable area.  Positions are continuous (any source pixel, not grid-aligned) and the window
    is clipped to stay inside the region; a region smaller than the fov gets the window at its
    origin, extending past it (readers pad).  ``sample`` returns the index into ``areas``.
    Areas without usable pixels are dropped (their indices in ``dropped``); ``names`` (e.g. the
    image files) only serve the error raised when no area is left.

    ``areas``: a list of SamplingArea, or AreaColumns for many images (per area a few numbers in
    arrays, no Python object). An area without grids that fits in one window (a small image) is
    drawn by image: it weighs one window (fov_px squared) and its window is the whole image, padded
    to fov_px (``small_images="pad"``) or the image itself, resized by the reader (``"resize"``).

    .. versionchanged:: many-images
       Areas are held in columns; small images weigh one window each and may be resized.
    """

    def __init__(
        self,
        areas,
        fov_px: int,
        foreground_share: float = 0.33,
        jitter: float = 0.25,
        names: list[str] | None = None,
        small_images: str = "pad",
    ):
        # why: the sampler's keyword options, each documented above (torchgeo's samplers take theirs the same way)
        if int(fov_px) <= 0:
            raise SegkitError(f"fov_px: must be a positive number of pixels, got {fov_px}")
        if not 0.0 <= float(foreground_share) <= 1.0:
            raise SegkitError(f"foreground_share: must be in [0, 1], got {foreground_share}")
        if not 0.0 <= float(jitter) <= 0.5:
            raise SegkitError(f"jitter: must be in [0, 0.5] (fraction of fov), got {jitter}")
        if small_images not in SMALL_IMAGE_MODES:
            raise SegkitError(f"small_images {small_images!r}: unknown, valid: {', '.join(SMALL_IMAGE_MODES)}")
        self.fov_px = int(fov_px)
        self.foreground_share = float(foreground_share)
        self.jitter = float(jitter)
        self.resize_small = small_images == "resize"
        columns = areas if isinstance(areas, AreaColumns) else AreaColumns.from_areas(list(areas))
        regions = _clipped_regions(columns)
        for i in np.flatnonzero(columns.region[:, 0] >= 0):  # the one region clipper, for its error message
            if regions[i, 2] <= 0 or regions[i, 3] <= 0:
                clip_region(int(columns.height[i]), int(columns.width[i]), Window(*(int(v) for v in columns.region[i])))
        weights = (regions[:, 2] * regions[:, 3]).astype(np.float64)
        small = (regions[:, 2] <= self.fov_px) & (regions[:, 3] <= self.fov_px)
        weights[small] = float(self.fov_px) ** 2
        self._grids = {}
        for i, area in columns.grids.items():
            prepared = _Prepared(i, area, Window(*(int(v) for v in regions[i])))
            self._grids[i] = prepared
            weights[i] = prepared.weight
        self.dropped = np.flatnonzero(weights <= 0).tolist()
        self._index = np.flatnonzero(weights > 0)
        if not self._index.size:
            which = f" ({', '.join(map(str, names[:5]))}{', ...' if len(names) > 5 else ''})" if names else ""
            raise SegkitError(
                f"sampler: none of the {len(weights)} image(s){which} has any usable area "
                "(empty tissue mask or region); check the tissue method or the regions"
            )
        self._regions = regions[self._index]
        w = weights[self._index]
        self.probabilities = w / w.sum()
        self._cumulative = np.cumsum(self.probabilities)

    def __len__(self) -> int:
        return int(self._index.size)

    def _uniform_centre(self, rng: np.random.Generator, p: _Prepared) -> tuple[float, float]:
        reg = p.region
        if p.usable is None:
            return reg.row + rng.random() * reg.height, reg.col + rng.random() * reg.width
        i, j = np.unravel_index(p.usable[rng.integers(p.usable.size)], p.usable_shape)
        r = (i + rng.random()) * p.scale
        c = (j + rng.random()) * p.scale
        # a cell straddling the region edge may put the centre just outside: pull it in
        return min(max(r, reg.row), reg.bottom - 1e-6), min(max(c, reg.col), reg.right - 1e-6)

    def _foreground_centre(self, rng: np.random.Generator, p: _Prepared) -> tuple[float, float]:
        i, j = np.unravel_index(p.fg[rng.integers(p.fg.size)], p.fg_shape)
        r = (i + rng.random()) * p.scale
        c = (j + rng.random()) * p.scale
        # at most fov/2 - 1 so the labelled source pixel always stays inside the window
        reach = min(self.jitter * self.fov_px, max(self.fov_px / 2 - 1, 0.0))
        return r + rng.uniform(-reach, reach), c + rng.uniform(-reach, reach)

    def _place(self, centre: float, start: int, length: int) -> int:
        if length <= self.fov_px:
            return start
        pos = int(np.floor(centre - self.fov_px / 2))
        return min(max(pos, start), start + length - self.fov_px)

    def sample(self, rng: np.random.Generator) -> tuple[int, Window]:
        """One draw: (index into the ``areas`` given, Window in source pixels)."""
        k = int(np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right"))
        k = min(k, len(self._index) - 1)  # guard against float round-off at the top end
        index = int(self._index[k])
        reg = Window(*(int(v) for v in self._regions[k]))
        p = self._grids.get(index)
        if p is None:
            p = _Prepared(index, SamplingArea(reg.height, reg.width), reg)  # a few numbers, made per draw
        want_fg = rng.random() < self.foreground_share
        if want_fg and p.fg.size:
            r, c = self._foreground_centre(rng, p)
        else:
            r, c = self._uniform_centre(rng, p)
        if self.resize_small and reg.height <= self.fov_px and reg.width <= self.fov_px:
            return index, reg
        row = self._place(r, reg.row, reg.height)
        col = self._place(c, reg.col, reg.width)
        return index, Window(row, col, self.fov_px, self.fov_px)


def outside_region(window: Window, region: Window, shape: tuple[int, int]) -> np.ndarray:
    """Bool (h, w) map of a window read at ``shape``: True where the pixel lies outside ``region``.

    A window can reach past its row's labelled region (a region smaller than the window, or one
    next to the image border); those pixels are not labelled, so training marks them ignored
    rather than taking them for background. Pixel centres decide, in source coordinates.
    """
    h, w = int(shape[0]), int(shape[1])
    rows = window.row + (np.arange(h) + 0.5) * (window.height / h)
    cols = window.col + (np.arange(w) + 0.5) * (window.width / w)
    inside_r = (rows >= region.row) & (rows < region.bottom)
    inside_c = (cols >= region.col) & (cols < region.right)
    return ~(inside_r[:, None] & inside_c[None, :])


def worker_rng(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    """A generator determined by (seed, epoch, rank, worker) alone, independent streams for each."""
    parts = (int(seed), int(epoch), int(rank), int(worker))
    if min(parts) < 0:
        raise SegkitError(f"worker_rng: seed, epoch, rank and worker must be >= 0, got {parts}")
    return np.random.default_rng(np.random.SeedSequence(list(parts)))
