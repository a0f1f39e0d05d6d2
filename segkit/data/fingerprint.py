"""The data fingerprint: what `segkit plan` reads off a manifest before choosing any setting.

Read the way training reads: raster headers, a thumbnail and a few sampled windows per image,
never a whole slide decoded (an image smaller than the sample budget is read in one window).
Everything is in source pixels; the result is a plain dict (JSON/YAML-ready) so it can be
written next to the plan and opened by a person, as nnU-Net's dataset fingerprint is.

    fp = fingerprint(rows, LabelOptions(), task="seg")
    fp["labels"]["diameter_px"]["p50"]      # typical object's equivalent diameter
    fp["labels"]["touching_share"]          # share of objects that touch another (object labels only)

Objects are the ids of an object source (id raster, polygons) or the connected components
(8-connected) of a class mask. An object cut by the edge of a sampled window that lies inside the
image is counted but left out of the size statistics (its size is unknown); objects on the image
edge are whole as far as anyone can tell and are kept.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from segkit.data.dataset import LabelOptions
from segkit.data.manifest import ManifestRow
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io.labels.instances import open_instances
from segkit.io.labels.masks import open_labels
from segkit.io.images.raster import open_raster

WINDOW_PX = 1024  # side of one sampled window, source pixels
WINDOWS = 8  # windows sampled per image (an image that fits in WINDOWS windows is read whole)
PERCENTILES = (5, 25, 50, 75, 95)
ID_RASTER_DTYPES = ("uint16", "int16", "uint32", "int32", "int64", "uint64")


def _windows(height: int, width: int, region: Window | None, rng: np.random.Generator, count: int,
             side: int) -> list[Window]:
    """Windows of at most ``side`` px covering the region when it fits in ``count``, else ``count``
    distinct cells of that grid drawn at random (sorted, so reading order is stable)."""
    reg = region or Window(0, 0, height, width)
    rows = list(range(reg.row, reg.row + reg.height, side))
    cols = list(range(reg.col, reg.col + reg.width, side))
    cells = [(r, c) for r in rows for c in cols]
    if len(cells) > count:
        cells = sorted(cells[i] for i in rng.choice(len(cells), count, replace=False))
    return [Window(r, c, min(side, reg.row + reg.height - r), min(side, reg.col + reg.width - c)) for r, c in cells]


def bit_depth(dtype: np.dtype, maximum: float) -> int:
    """Bits the values use: 8 for uint8, ceil(log2(max + 1)) for wider integers (12-bit data in
    uint16 says 12), the dtype's width for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and dtype.itemsize > 1:
        return max(8, int(np.ceil(np.log2(max(float(maximum), 1.0) + 1))))
    return dtype.itemsize * 8


def object_kind(row: ManifestRow, options: LabelOptions) -> str:
    """"instances" when the label source holds objects (polygons, an integer id raster), else "mask"."""
    if options.instances:
        return "instances"
    if row.label is None or options.class_map or options.class_property:
        return "mask"
    suffix = Path(row.label).suffix.lower()
    if suffix in (".geojson", ".json"):
        return "instances"
    if suffix == ".csv":
        return "mask"
    with open_raster(row.label) as raster:
        if str(raster.dtype) in ID_RASTER_DTYPES:
            return "instances"
        values = np.unique(raster.thumbnail(256, nearest=True)[0])
    return "instances" if values.size > 16 else "mask"


def _open_label(row: ManifestRow, raster, options: LabelOptions, kind: str):
    if kind == "instances":
        return open_instances(row.label, raster, image_id=row.id, rle_order=options.rle_order)
    return open_labels(row.label, raster, image_id=row.id, rle_order=options.rle_order,
                       class_map=options.class_map, class_property=options.class_property)


def _touching(ids: np.ndarray) -> set:
    """Ids of objects with an 8-neighbour pixel that belongs to another object."""
    out: set = set()
    padded = np.pad(ids, 1)
    centre = padded[1:-1, 1:-1]
    h, w = padded.shape
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        other = padded[1 + dr:h - 1 + dr, 1 + dc:w - 1 + dc]
        pair = (centre != other) & (centre > 0) & (other > 0)
        out.update(np.unique(centre[pair]).tolist())
        out.update(np.unique(other[pair]).tolist())
    return out


def window_objects(ids: np.ndarray, window: Window, height: int, width: int) -> tuple[list[int], int, int]:
    """(areas of the objects whole in this window, objects seen, objects touching another) of an id
    array; an object on a window edge that is not an image edge is seen but not measured."""
    labels = np.unique(ids)
    labels = labels[labels > 0]
    if not labels.size:
        return [], 0, 0
    areas = ndimage.sum_labels(np.ones_like(ids, np.int64), ids, labels)
    edge = set()
    if window.row > 0:
        edge.update(np.unique(ids[0]).tolist())
    if window.col > 0:
        edge.update(np.unique(ids[:, 0]).tolist())
    if window.row + window.height < height:
        edge.update(np.unique(ids[-1]).tolist())
    if window.col + window.width < width:
        edge.update(np.unique(ids[:, -1]).tolist())
    whole = [int(a) for label, a in zip(labels.tolist(), areas) if label not in edge]
    return whole, int(labels.size), len(_touching(ids))


def _summary(values, digits: int = 1) -> dict | None:
    if not len(values):
        return None
    values = np.asarray(values, np.float64)
    out = {f"p{p}": round(float(np.percentile(values, p)), digits) for p in PERCENTILES}
    out["max"] = round(float(values.max()), digits)
    return out


def image_fingerprint(row: ManifestRow, options: LabelOptions, *, kind: str, seed: int,
                      windows: int = WINDOWS, window_px: int = WINDOW_PX) -> tuple[dict, dict]:
    """(image facts, label tallies) of one manifest row, from its header, thumbnail and sampled windows."""
    rng = np.random.default_rng(seed)
    with open_raster(row.image) as raster:
        thumb = raster.thumbnail(256, nearest=True)[0]
        usable = 1.0
        if raster.nodata is not None:
            usable = float(np.mean(~np.all(thumb == raster.nodata, axis=-1)))
        cuts = _windows(raster.height, raster.width, row.region, rng, windows, window_px)
        samples = [raster.read(w) for w in cuts]
        pixels = np.concatenate([s.reshape(-1, raster.channels) for s in samples]).astype(np.float64)
        low, high = np.nanpercentile(pixels, 1, axis=0), np.nanpercentile(pixels, 99, axis=0)
        image = {
            "id": row.id, "file": str(row.image), "height": raster.height, "width": raster.width,
            "region": list(row.region) if row.region else None, "dtype": str(raster.dtype),
            "bits": bit_depth(raster.dtype, np.nanmax(pixels)), "bands": raster.channels,
            "nodata": None if raster.nodata is None else float(raster.nodata), "usable_share": round(usable, 4),
            "range": [[round(float(a), 3), round(float(b), 3)] for a, b in zip(low, high)],
        }
        tally = {"pixels": 0, "classes": Counter(), "areas": [], "objects": 0, "touching": 0}
        if row.label is None:
            return image, tally
        labels = _open_label(row, raster, options, kind)
        for window in cuts:
            mask = labels.read(window)
            tally["pixels"] += mask.size
            tally["classes"].update({int(k): int(v) for k, v in zip(*np.unique(mask, return_counts=True))})
            ids = labels.read_instances(window) if kind == "instances" else \
                ndimage.label(mask > 0, structure=np.ones((3, 3), bool))[0]
            whole, seen, touching = window_objects(ids, window, raster.height, raster.width)
            tally["areas"] += whole
            tally["objects"] += seen
            tally["touching"] += touching
        return image, tally


def header_check(rows: list[ManifestRow]) -> None:
    """Refuse a manifest whose images differ in band count or dtype, naming the first odd file
    (a network takes one kind of input; plan each kind on its own)."""
    kinds = []
    for row in rows:
        with open_raster(row.image) as raster:
            kinds.append((raster.channels, str(raster.dtype)))
    (bands, dtype), count = Counter(kinds).most_common(1)[0]
    odd = [(row, kind) for row, kind in zip(rows, kinds) if kind != (bands, dtype)]
    if odd:
        (row, (b, d)) = odd[0]
        raise SegkitError(f"{row.image}: {b} band(s) {d}, but {count} of the {len(rows)} images are {bands} band(s) "
                          f"{dtype} ({len(odd)} odd file(s)); a network takes one kind of input: plan each kind "
                          "in its own manifest")


def _majority(images: list[dict]) -> tuple[dict, list[str]]:
    """The most common (bands, dtype) and the ids of images that differ from it."""
    counts = Counter((im["bands"], im["dtype"]) for im in images)
    (bands, dtype), _ = counts.most_common(1)[0]  # ties: the first image's kind (most_common is stable)
    odd = [im["id"] for im in images if (im["bands"], im["dtype"]) != (bands, dtype)]
    return {"bands": bands, "dtype": dtype}, odd


def _pooled_range(images: list[dict], bands: int) -> list[list[float]]:
    """Per band: the lowest 1st and highest 99th percentile over the images with that band count."""
    ranges = [im["range"] for im in images if im["bands"] == bands]
    return [[min(r[b][0] for r in ranges), max(r[b][1] for r in ranges)] for b in range(bands)]


def label_summary(tallies: list[dict], kind: str) -> dict:
    """The labels' figures pooled over images: foreground share, objects, sizes, touching share, classes."""
    pixels = sum(t["pixels"] for t in tallies)
    classes = sum((t["classes"] for t in tallies), Counter())
    areas = [a for t in tallies for a in t["areas"]]
    objects = sum(t["objects"] for t in tallies)
    background = classes.get(0, 0)
    return {
        "labelled_pixels": int(pixels),
        "foreground_share": round(1 - background / pixels, 5) if pixels else 0.0,
        "object_labels": kind,
        "objects": int(objects),
        "measured_objects": len(areas),
        "area_px": _summary(areas),
        "diameter_px": _summary([2 * np.sqrt(a / np.pi) for a in areas]),
        "touching_share": round(sum(t["touching"] for t in tallies) / objects, 4) if objects else 0.0,
        "classes": {int(k): round(v / pixels, 5) for k, v in sorted(classes.items())} if pixels else {},
    }


def fingerprint(rows: list[ManifestRow], options: LabelOptions, *, task: str = "seg", seed: int = 0,
                windows: int = WINDOWS, window_px: int = WINDOW_PX, max_images: int = 64) -> dict:
    """The fingerprint of a manifest's rows (at most ``max_images`` of them sampled, evenly spaced).

    {"task", "images": [per image: id, file, height, width, region, dtype, bits, bands, nodata,
    usable_share, range (1st/99th percentile per band)], "majority": {bands, dtype}, "odd": [ids],
    "range": pooled per band, "bits", "labels": label_summary(...) (seg) | "classes" (cls)}.
    """
    if not rows:
        raise SegkitError("fingerprint: the manifest has no rows")
    picked = rows if len(rows) <= max_images else [rows[int(i)] for i in np.linspace(0, len(rows) - 1, max_images)]
    labelled = [r for r in picked if r.label is not None]
    kind = object_kind(labelled[0], options) if labelled and task != "cls" else "mask"
    images, tallies = [], []
    for index, row in enumerate(picked):
        image, tally = image_fingerprint(row, options, kind=kind, seed=seed + index, windows=windows,
                                         window_px=window_px if task != "cls" else 1 << 30)
        images.append(image)
        tallies.append(tally)
    majority, odd = _majority(images)
    out = {"task": task, "rows": len(rows), "sampled_rows": len(picked), "images": images, "majority": majority,
           "odd": odd, "range": _pooled_range(images, majority["bands"]),
           "bits": max(im["bits"] for im in images if im["dtype"] == majority["dtype"])}
    sides = [min(im["height"], im["width"]) if not im["region"] else min(im["region"][2:]) for im in images]
    out["image_side_px"] = _summary(sides, 0)
    if task == "cls":
        out["classes"] = dict(sorted(Counter(str(r.target) for r in rows if r.target is not None).items()))
    if task != "cls":
        out["labels"] = label_summary(tallies, kind)
        out["labels"]["labelled_rows"] = len(labelled)
    return out
