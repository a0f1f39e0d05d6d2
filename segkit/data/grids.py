"""Low-resolution usable-area and foreground grids of manifest rows, and the window sampler built on them.

Thumbnail cache. The usable-area grid (tissue mask) and the foreground grid come from a
1024-px thumbnail, and building one decodes every tile of the slide (tens of seconds on a
30000x40000 WSI). ``train``, ``finetune``, every fold and the stratified split all need the same
grids, so they are cached twice: in memory for the life of the process, and on disk as a small
bit-packed ``.npz`` (a few KB) under ``$SEGKIT_CACHE_DIR`` (default ``~/.cache/segkit``;
``off`` disables the disk copy). The key is the file's absolute path, size and mtime plus
everything the grid depends on (tissue method, label decoding options, thumbnail size), so an
edited file or another method is a new entry, never a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from segkit.data.dataset import SourcePair, region_cells
from segkit.data.table import small_rows
from segkit.data.windows import AreaColumns, RandomWindowSampler, SamplingArea, tissue_mask
from segkit.ground.errors import SegkitError
from segkit.ground.ignore import IGNORE_INDEX
from segkit.io.atomic import atomic_path

THUMB_SIDE = 1024  # low-resolution grid for tissue and foreground sampling
CACHE_ENV = "SEGKIT_CACHE_DIR"
_CACHE_VERSION = 1
_MEMORY: "OrderedDict[str, dict]" = OrderedDict()  # key -> packed grids, this process only (the last few)
_MEMORY_KEPT = 256  # grids of a few hundred slides; a manifest of many small images does not pile them up
# raw thumbnails (a few MB each) are kept in memory only, for the last few images: the channel
# windows/statistics and the usable grid of the same image then share one whole-slide read
_THUMBS: "OrderedDict[str, tuple[np.ndarray, float]]" = OrderedDict()
_THUMBS_KEPT = 4


# ---------------------------------------------------------------- cached low-resolution grids


def cache_dir(explicit: str | Path | None = None) -> Optional[Path]:
    """Folder of the on-disk thumbnail cache, or None when disabled ('off')."""
    value = explicit if explicit is not None else os.environ.get(CACHE_ENV)
    if value is not None and str(value).strip().lower() in ("", "off", "none", "0", "false"):
        return None
    if value is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segkit"
    else:
        base = Path(os.path.expanduser(str(value)))
    return base / "thumbs"


def clear_memory_cache() -> None:
    """Forget the grids and raw thumbnails held in this process (the disk copies stay)."""
    _MEMORY.clear()
    _THUMBS.clear()


def _stamp(path) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _key(kind: str, **parts) -> str:
    text = json.dumps([_CACHE_VERSION, kind, parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha1(text.encode()).hexdigest()}"


def _pack(grid: np.ndarray) -> dict:
    return {"bits": np.packbits(grid.astype(bool), axis=None), "shape": np.array(grid.shape, np.int64)}


def _unpack(value: dict) -> np.ndarray:
    shape = tuple(int(v) for v in value["shape"])
    return np.unpackbits(value["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)


def _load(file: Path) -> Optional[dict]:
    try:
        with np.load(file) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # a truncated or foreign file is recomputed, not an error


def _save(file: Path, value: dict) -> None:
    try:
        with atomic_path(file, overwrite=True, make_parents=True) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **value)
    except OSError:
        pass  # a read-only or full cache folder only costs the recomputation next time


def _cached(key: str, compute: Callable[[], dict], directory: Optional[Path]) -> dict:
    value = _MEMORY.get(key)
    if value is None and directory is not None:
        value = _load(directory / f"{key}.npz")
    if value is None:
        value = compute()
        if directory is not None:
            _save(directory / f"{key}.npz", value)
    _MEMORY[key] = value
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_KEPT:
        _MEMORY.popitem(last=False)
    return value


def image_thumbnail(pair: SourcePair) -> tuple[np.ndarray, float]:
    """The image's THUMB_SIDE thumbnail (HWC raw dtype; source px per thumb px), kept in memory for
    the last few images so that channel windows and the usable grid share one whole-slide read."""
    key = json.dumps(_stamp(pair.row.image))
    if key in _THUMBS:
        _THUMBS.move_to_end(key)
        return _THUMBS[key]
    value = pair.raster.thumbnail(THUMB_SIDE)
    value[0].setflags(write=False)  # shared between callers
    _THUMBS[key] = value
    while len(_THUMBS) > _THUMBS_KEPT:
        _THUMBS.popitem(last=False)
    return value


def usable_grid(pair: SourcePair, tissue: str, *, cache: str | Path | None = None) -> tuple[np.ndarray, float]:
    """(bool grid of the area worth sampling, source px per grid px) from the image thumbnail; cached."""
    image = pair.row.image
    key = _key("usable", image=_stamp(image), method=tissue, side=THUMB_SIDE)

    def compute() -> dict:
        thumb, scale = image_thumbnail(pair)
        return {**_pack(tissue_mask(thumb, method=tissue)), "scale": np.float64(scale)}

    value = _cached(key, compute, cache_dir(cache))
    return _unpack(value), float(value["scale"])


def foreground_grid(pair: SourcePair, *, cache: str | Path | None = None) -> Optional[tuple[np.ndarray, float]]:
    """(bool grid of labelled pixels, source px per grid px) from the label thumbnail; None without labels."""
    if pair.row.label is None:
        return None
    o = pair.options
    key = _key(
        "foreground", label=_stamp(pair.row.label), image=_stamp(pair.row.image), id=pair.row.id,
        rle_order=o.rle_order, class_map=o.class_map, class_property=o.class_property, side=THUMB_SIDE,
        **({"instances": True} if o.instances else {}),
    )

    def compute() -> dict:
        thumb, scale = pair.labels.thumbnail(THUMB_SIDE)
        return {**_pack((thumb > 0) & (thumb != IGNORE_INDEX)), "scale": np.float64(scale)}

    value = _cached(key, compute, cache_dir(cache))
    return _unpack(value), float(value["scale"])


def sampling_area(pair: SourcePair, tissue: str, *, cache: str | Path | None = None) -> SamplingArea:
    """Low-resolution usable-area and foreground grids of one manifest row (cached, see above).

    An image (or region) with no usable area is an error naming the row and file: it would
    otherwise be silently left out of training.
    """
    raster = pair.raster
    usable, scale = usable_grid(pair, tissue, cache=cache)
    rows, cols = region_cells(usable.shape, scale, pair)
    if not usable[rows, cols].any():
        where = f"region {','.join(map(str, pair.row.region))}" if pair.row.region else "image"
        raise SegkitError(
            f"{pair.name}: no usable area in the {where} (data.tissue={tissue} found no tissue); "
            "check the image or use another data.tissue method"
        )
    foreground = None
    fg = foreground_grid(pair, cache=cache)
    if fg is not None:
        foreground = fg[0][: usable.shape[0], : usable.shape[1]]
    return SamplingArea(
        height=raster.height,
        width=raster.width,
        region=pair.row.region,
        usable=usable,
        scale=scale,
        foreground=foreground,
        weight=1.0 if pair.row.weight is None else float(pair.row.weight),
    )


def foreground_fraction(pair: SourcePair, *, cache: str | Path | None = None) -> float:
    """Share of the row's region (or image) whose thumbnail pixel holds a label.

    Measured on the 1024-px label thumbnail (a block max), so tiny objects count as whole
    thumbnail pixels: good for ranking rows into strata, not an exact pixel count.
    """
    fg = foreground_grid(pair, cache=cache)
    if fg is None:
        raise SegkitError(f"{pair.name}: no label, so no foreground fraction")
    grid, scale = fg
    rows, cols = region_cells(grid.shape, scale, pair)
    cells = grid[rows, cols]
    return float(cells.mean()) if cells.size else 0.0


def create_sampler(
    pairs,
    areas,
    fov_px: int,
    *,
    foreground_share: float = 0.33,
    jitter: float = 0.25,
    small_images: str = "pad",
) -> RandomWindowSampler:
    """RandomWindowSampler whose errors name the files; areas it drops are warned about.

    ``pairs``: a list of SourcePair or a PairList; ``areas``: their SamplingAreas or AreaColumns."""
    names = [_image_name(pairs, i) for i in range(min(6, len(pairs)))]  # the no-usable-area error shows five
    sampler = RandomWindowSampler(areas, fov_px, foreground_share=foreground_share, jitter=jitter, names=names,
                                  small_images=small_images)
    if sampler.dropped:
        names = ", ".join(pairs.name(i) if hasattr(pairs, "name") else pairs[i].name for i in sampler.dropped[:5])
        more = f" and {len(sampler.dropped) - 5} more" if len(sampler.dropped) > 5 else ""
        warnings.warn(f"no usable area, left out of training: {names}{more}", UserWarning, stacklevel=2)
    return sampler


def _image_name(pairs, index: int) -> str:
    return pairs.table.image[index] if hasattr(pairs, "table") else str(pairs[index].row.image)


def sampling_columns(pairs, tissue: str, fov_px: int, *, cache: str | Path | None = None) -> AreaColumns:
    """The sampler's areas of a PairList: grids (sampling_area) only for rows larger than one window.

    A row whose image (or region) fits in fov_px is drawn whole, so neither its usable area nor its
    foreground is measured: no thumbnail is read for it.
    """
    table = pairs.table
    large = np.flatnonzero(~small_rows(table, fov_px))
    return AreaColumns(table.height.astype(np.int64), table.width.astype(np.int64), table.region,
                       {int(i): sampling_area(pairs[int(i)], tissue, cache=cache) for i in large})
