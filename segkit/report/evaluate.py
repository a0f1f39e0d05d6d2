"""Score predictions against truth per image (or tile) and per class, and compare two predictions.

The unit scored is an *item*: a whole image (or its region) when its longer side is at most
``tile_px``, else each tile of a ``tile_px`` grid over it, so a slide is read tile by tile and
the report can point at the tile where a model fails. An image's scores pool the pixel counts of
its items (exact); its object counts are the sums over its tiles (an object cut by a tile edge
counts in each tile: a small bias on slides, none on images that fit one item).

Object-level scores (object F1 at IoU >= 0.5, matched one-to-one) use the connected components
of each class (segkit.metrics.objects), the usual reading of instance-like labels such as
nuclei or glomeruli when the masks carry no instance ids. With ``instances`` (a run with instance
targets) objects are the sources' own ids (``read_instances``: the watershed objects, the true
instance labels; connected components where a source has none) and each item also gets the Data
Science Bowl score (its image's: the mean over its items, exact when the image is one item).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from segkit.ground.geometry import Window
from segkit.io.raster import open_raster
from segkit.metrics.objects import label_components, object_scores
from segkit.metrics.scores import SCORES, mean_scores, pixel_counts, pixel_scores, scored_labels
from segkit.metrics.seg import f1_from_counts
from segkit.report.sources import EmptyLabels, EvalImage

DEFAULT_TILE_PX = 2048  # items larger than this are scored (and shown) tile by tile


@dataclass
class ItemScore:
    image_id: str
    window: Window
    counts: np.ndarray  # (labels, 3) TP, FP, FN pixels per scored class
    objects: Optional[np.ndarray] = None  # (3,) TP, FP, FN objects summed over classes
    dsb: Optional[float] = None  # Data Science Bowl score of the item's objects (instance runs)

    @property
    def key(self) -> str:
        return item_key(self.image_id, self.window)

    def scores(self) -> dict:
        out = mean_scores(self.counts)
        if self.objects is not None:
            out["object_f1"] = f1_from_counts(*(int(v) for v in self.objects))
        if self.dsb is not None:
            out["dsb"] = self.dsb
        return out


def item_key(image_id: str, window: Window) -> str:
    return f"{image_id}@{window.row},{window.col},{window.height},{window.width}"


@dataclass
class Evaluation:
    """Scores of one prediction against the truth; notes say what was skipped or taken as empty."""

    label: str
    classes: int
    items: list[ItemScore] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    full_images: set = field(default_factory=set)  # ids whose single item covers the image's whole region

    @property
    def labels(self) -> list[int]:
        return scored_labels(self.classes)

    def image_ids(self) -> list[str]:
        return list(dict.fromkeys(item.image_id for item in self.items))

    def image_counts(self) -> dict[str, tuple[np.ndarray, Optional[np.ndarray]]]:
        """{image id: (pixel counts pooled over its items, object counts summed or None)}."""
        out: dict = {}
        for item in self.items:
            counts, objects = out.get(item.image_id, (0, None))
            if item.objects is not None:
                objects = item.objects if objects is None else objects + item.objects
            out[item.image_id] = (counts + item.counts, objects)
        return out

    def image_dsb(self) -> dict[str, float]:
        """{image id: mean DSB score of its items} for the images scored by instances."""
        found: dict = {}
        for item in self.items:
            if item.dsb is not None:
                found.setdefault(item.image_id, []).append(item.dsb)
        return {image_id: float(np.mean(values)) for image_id, values in found.items()}

    def per_image(self) -> dict[str, dict]:
        out, dsb = {}, self.image_dsb()
        for image_id, (counts, objects) in self.image_counts().items():
            scores = mean_scores(counts)
            if objects is not None:
                scores["object_f1"] = f1_from_counts(*(int(v) for v in objects))
            if image_id in dsb:
                scores["dsb"] = dsb[image_id]
            out[image_id] = scores
        return out

    def per_class(self) -> list[dict]:
        """Per scored class: each measure's mean over images and the Dice of all pixels pooled."""
        images = self.image_counts()
        if not images:
            return []
        stacked = np.stack([counts for counts, _ in images.values()])  # (images, labels, 3)
        per_image = pixel_scores(stacked)
        pooled = pixel_scores(stacked.sum(axis=0))
        return [{"class": label, **{name: float(per_image[name][:, i].mean()) for name in SCORES},
                 "dice_pooled": float(pooled["dice"][i]), "true_px": int(stacked[:, i, 0].sum() + stacked[:, i, 2].sum())}
                for i, label in enumerate(self.labels)]

    def summary(self) -> dict:
        """Means over images of each measure, pooled Dice and pooled object F1."""
        per_image = self.per_image()
        out: dict = {"images": len(per_image), "items": len(self.items)}
        if not per_image:
            return out
        for name in SCORES:
            out[name] = float(np.mean([s[name] for s in per_image.values()]))
        counts = sum(c for c, _ in self.image_counts().values())
        out["dice_pooled"] = float(pixel_scores(counts)["dice"].mean())
        objects = [o for _, o in self.image_counts().values() if o is not None]
        if objects:
            tp, fp, fn = (int(v) for v in np.sum(objects, axis=0))
            out.update(object_f1=f1_from_counts(tp, fp, fn), object_tp=tp, object_fp=fp, object_fn=fn)
        dsb = self.image_dsb()
        if dsb:
            out["dsb"] = float(np.mean(list(dsb.values())))
        return out

    def to_dict(self) -> dict:
        return {"label": self.label, "classes": self.classes, "summary": self.summary(), "notes": self.notes,
                "per_class": self.per_class(), "per_image": self.per_image(),
                "items": [{"image": i.image_id, "window": list(i.window), **i.scores()} for i in self.items]}


def item_windows(region: Window, tile_px: int) -> list[Window]:
    """The region itself when it fits tile_px, else its tile_px grid (edge tiles smaller)."""
    if max(region.height, region.width) <= tile_px:
        return [region]
    return [Window(r, c, min(tile_px, region.bottom - r), min(tile_px, region.right - c))
            for r in range(region.row, region.bottom, tile_px) for c in range(region.col, region.right, tile_px)]


def score_masks(pred: np.ndarray, truth: np.ndarray, classes: int, objects: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(pixel counts (labels, 3), object TP/FP/FN summed over classes or None) of one item."""
    counts = pixel_counts(pred, truth, classes)
    if not objects:
        return counts, None
    total = np.zeros(3, np.int64)
    for label in scored_labels(classes):
        p, t = (pred != 0, truth != 0) if classes <= 1 else (pred == label, truth == label)
        found = object_scores(label_components(p), label_components(t))
        total += (found["tp"], found["fp"], found["fn"])
    return counts, total


def score_instances(pred_ids: np.ndarray, true_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(pixel counts (1, 3) of the objects' union, object TP/FP/FN at IoU 0.5, DSB score) of one item."""
    found = object_scores(pred_ids, true_ids)
    return pixel_counts(pred_ids, true_ids, 1), np.array([found["tp"], found["fp"], found["fn"]], np.int64), found["dsb"]


def _instances_of(source, window: Window) -> np.ndarray:
    """The source's object ids in window; connected components of what it reads when it has no ids."""
    if hasattr(source, "read_instances"):
        return source.read_instances(window)
    return label_components(source.read(window))


def image_region(image: EvalImage, height: int, width: int) -> Window:
    """The image's region clipped to the image (the whole image without one)."""
    if image.region is None:
        return Window(0, 0, height, width)
    r0, c0 = max(0, image.region.row), max(0, image.region.col)
    r1, c1 = min(height, image.region.bottom), min(width, image.region.right)
    return Window(r0, c0, max(0, r1 - r0), max(0, c1 - c0))


Opener = Callable[[EvalImage, object], object]  # (image, raster) -> label source or None


def evaluate_images(images: list[EvalImage], truth_for: Opener, pred_for: Opener, *, classes: int = 1,
                    tile_px: int = DEFAULT_TILE_PX, objects: bool = True, label: str = "prediction",
                    instances: bool = False) -> Evaluation:
    """Score every image that has truth; images without truth are skipped and those without a
    prediction scored as empty, each counted in the notes. ``instances``: binary objects scored
    by their ids with the DSB score (see the module docstring); ``classes`` must be 1."""
    if instances and int(classes) != 1:
        raise ValueError(f"evaluate_images: instances are scored as one class, not {classes}")
    evaluation = Evaluation(label=label, classes=int(classes))
    no_truth, no_pred = [], []
    for image in images:
        with open_raster(image.image) as raster:
            truth = truth_for(image, raster)
            if truth is None:
                no_truth.append(image.id)
                continue
            pred = pred_for(image, raster)
            if pred is None:
                no_pred.append(image.id)
                pred = EmptyLabels()
            region = image_region(image, raster.height, raster.width)
            windows = item_windows(region, tile_px)
            if len(windows) == 1:
                evaluation.full_images.add(image.id)
            for window in windows:
                if instances and objects:
                    counts, found, dsb = score_instances(_instances_of(pred, window), _instances_of(truth, window))
                    evaluation.items.append(ItemScore(image.id, window, counts, found, dsb))
                    continue
                counts, found = score_masks(pred.read(window), truth.read(window), classes, objects)
                evaluation.items.append(ItemScore(image.id, window, counts, found))
    if no_truth:
        evaluation.notes.append(f"{len(no_truth)} image(s) have no labels and were skipped: {_first(no_truth)}")
    if no_pred:
        evaluation.notes.append(f"{len(no_pred)} image(s) have no prediction and were scored as empty: {_first(no_pred)}")
    return evaluation


def _first(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


@dataclass
class Comparison:
    """Per image and per item differences of one measure between a new and an older evaluation."""

    new: Evaluation
    old: Evaluation
    measure: str
    images: list[dict]  # {id, new, old, delta}, sorted by delta (worst first)
    items: list[dict]  # {key, image_id, window, new, old, delta}, sorted by |delta| (largest first)
    only_new: list[str]
    only_old: list[str]

    def summary(self) -> dict:
        deltas = [row["delta"] for row in self.images]
        common = [row["id"] for row in self.images]
        mean = lambda rows, k: float(np.mean([r[k] for r in rows])) if rows else math.nan  # noqa: E731
        return {"common": len(common), "better": sum(d > 0 for d in deltas), "worse": sum(d < 0 for d in deltas),
                "same": sum(d == 0 for d in deltas), "new_mean": mean(self.images, "new"),
                "old_mean": mean(self.images, "old"), "only_new": len(self.only_new), "only_old": len(self.only_old)}


def compare(new: Evaluation, old: Evaluation, measure: str = "dice") -> Comparison:
    """Images (and items) scored in both; the others are listed, not compared."""
    a, b = new.per_image(), old.per_image()
    common = [i for i in a if i in b]
    images = sorted(({"id": i, "new": a[i][measure], "old": b[i][measure], "delta": a[i][measure] - b[i][measure]}
                     for i in common), key=lambda r: (r["delta"], r["id"]))
    old_items = {item.key: item for item in old.items}
    items = []
    for item in new.items:
        other = old_items.get(item.key)
        if other is not None:
            x, y = item.scores()[measure], other.scores()[measure]
            items.append({"key": item.key, "image_id": item.image_id, "window": item.window, "new": x, "old": y,
                          "delta": x - y})
    items.sort(key=lambda r: (-abs(r["delta"]), r["key"]))
    return Comparison(new, old, measure, images, items, [i for i in a if i not in b], [i for i in b if i not in a])
