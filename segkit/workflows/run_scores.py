"""`segkit evaluate --run RUN`: predict the run's validation fold as `infer` would, then score it.

The validation images (and regions) are the run's own fold of its manifest. Each is predicted by
the infer predictor with the run's infer settings (tiling, TTA, checkpoints, threshold, small
objects, holes), the masks written as tiled TIFFs to a temporary folder and read back by window
like any other prediction. A run with instance targets is predicted as `infer --instances` would:
its watershed objects are written as uint32 ids too, and scored object by object against the true
ids. With --search each TTA view is also predicted alone (float
probabilities), so the view weights, threshold and minimum object size can be searched on them
(segkit.tune.thresholds); the best are saved as the run's infer defaults in its config.yaml.
On an instance run --search predicts the body/border/contact probabilities once and searches the
watershed's thresholds on them instead (segkit.tune.seeds).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from segkit.data.targets import parse_targets
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.run import check_channels, infer_settings, load_ensemble, post_process, stream_probs
from segkit.infer.tta import parse_tta
from segkit.io.labels.masks import open_labels
from segkit.io.images.raster import open_raster
from segkit.io.writers.strips import TiffStripWriter
from segkit.evaluate.scoring import image_region, item_windows
from segkit.tune.thresholds import PostSetting, search_postprocess
from segkit.tune.seeds import search_seeds
from segkit.post.watershed import StripWatershed
from segkit.evaluate.sources import EvalImage, OffsetInstances, OffsetLabels, images_from_rows
from segkit.runs.rundir import read_run_info, save_config, update_run_info
from segkit.train.from_config import split_rows


def validation_images(config: Config, run_dir: Path) -> list[EvalImage]:
    _, rows = split_rows(config)
    if not rows:
        raise SegkitError(f"{run_dir}: validation fold {config.data.val_fold} of {config.data.manifest} has no rows")
    return images_from_rows(rows)


class RunPredictions:
    """A run's predictions of its validation images, as files in `workdir` (a temporary folder)."""

    def __init__(self, run_dir: Path, images: list[EvalImage], device, workdir: Path, config: Config | None = None):
        """``config``: the run's config with the infer settings to use (default: its own config.yaml)."""
        self.run_dir, self.images, self.device, self.workdir = Path(run_dir), images, device, Path(workdir)
        self.config = config if config is not None else load_config(self.run_dir / "config.yaml")
        read_run_info(self.run_dir)  # a folder that is not a run fails here
        self.settings = infer_settings(self.config)
        self.targets = parse_targets(self.config.data.targets)  # instance run: outputs are watershed objects
        self.ensemble = load_ensemble([self.run_dir], self.config.infer.epochs, device)
        self.masks: dict[str, tuple[Path, Window]] = {}
        self.views: dict[str, dict[str, Path]] = {}
        self.instances: dict[str, Path] = {}  # instance runs: uint32 object ids next to each mask

    def describe(self) -> str:
        """The settings the predictions are made with, as one line."""
        s = self.settings
        text = (f"checkpoints [{', '.join(p.name for p in self.ensemble.checkpoints)}] (infer.epochs "
                f"{self.config.infer.epochs}), tta {s.tta}, threshold {s.threshold}, min_object_px {s.min_object_px}, "
                f"fill_holes {str(s.fill_holes).lower()}")
        if self.targets:
            text += f", seed_threshold {s.seeds.seed}, seed_border {s.seeds.border}"
        return text

    def predict_masks(self) -> None:
        """Masks with the run's own settings, through infer's predictor and post-processing."""
        for image in self.images:
            raster = open_raster(image.image)
            check_channels(raster, self.ensemble.preprocess)
            region = image_region(image, raster.height, raster.width)
            strips = stream_probs(self.ensemble, raster, self.settings, self.device, region=region)
            path = self.workdir / f"{len(self.masks):05d}.mask.tif"
            if self.targets:
                self._write_objects(strips, region, path, image.id)
            else:
                masks = post_process(strips, raster, self.ensemble.preprocess, self.settings, self.ensemble.classes,
                                     region=region)
                with TiffStripWriter(path, region.height, region.width, 1, "uint8") as writer:
                    for _, mask, _ in masks:
                        writer.write(mask)
            self.masks[image.id] = (path, region)

    def _write_objects(self, strips, region: Window, path: Path, image_id: str) -> None:
        """Watershed objects of the region as infer writes them: their union (mask) and their ids."""
        ids_path = path.with_name(path.name.replace(".mask.", ".ids."))
        with TiffStripWriter(path, region.height, region.width, 1, "uint8") as masks, \
                TiffStripWriter(ids_path, region.height, region.width, 1, "uint32") as ids_writer:
            for _, ids, _ in StripWatershed(region.height, region.width, self.targets, self.settings.seeds)(strips):
                masks.write((ids != 0).astype(np.uint8))
                ids_writer.write(ids.astype(np.uint32))
        self.instances[image_id] = ids_path

    def predict_views(self) -> list[tuple[str, float]]:
        """Each TTA view alone, as float32 probabilities; returns the run's (view, weight) pairs."""
        if self.ensemble.classes != 1:
            raise SegkitError(f"{self.run_dir}: --search tunes a probability threshold; it needs a binary run "
                              f"(model.classes 1, this run has {self.ensemble.classes})")
        views = parse_tta(self.settings.tta)
        for index, image in enumerate(self.images):
            raster = open_raster(image.image)
            region = image_region(image, raster.height, raster.width)
            self.views[image.id] = {}
            for view, _ in views:
                path = self.workdir / f"{index:05d}.{view}.tif"
                with TiffStripWriter(path, region.height, region.width, 1, "float32") as writer:
                    # [(view, 1.0)], not the name: "hflip" alone names the original + flip set
                    for _, probs in stream_probs(self.ensemble, raster, self.settings, self.device, region=region,
                                                  tta=[(view, 1.0)]):
                        writer.write(probs.astype(np.float32))
                self.views[image.id][view] = path
        return views

    def pred_for(self, image: EvalImage, raster):
        path, region = self.masks[image.id]
        if image.id in self.instances:
            return OffsetInstances(open_labels(path, open_raster(path)), region, open_raster(self.instances[image.id]))
        return OffsetLabels(open_labels(path, open_raster(path)), region)

    def search_items(self, truth_for, tile_px: int):
        """A loader for postsearch: (image id, {view: probs}, truth bool) per item, read from the files."""
        def load():
            for image, _, truth, region in labelled_regions(self.images, truth_for):
                files = {view: open_raster(path) for view, path in self.views[image.id].items()}
                for window in item_windows(region, tile_px):
                    local = Window(window.row - region.row, window.col - region.col, window.height, window.width)
                    probs = {view: f.read(local)[..., 0].astype(np.float32) for view, f in files.items()}
                    yield image.id, probs, truth.read(window) != 0
        return load


def labelled_regions(images: list[EvalImage], truth_for):
    """(image, open raster, truth, region) of every validation image that has a truth, one open at a time."""
    for image in images:
        with open_raster(image.image) as raster:
            truth = truth_for(image, raster)
            if truth is not None:
                yield image, raster, truth, image_region(image, raster.height, raster.width)


def run_seed_search(predictions: RunPredictions, truth_for) -> dict:
    """Instance runs: the validation regions' body/border/contact probabilities predicted once (kept in
    memory, a validation region is small) and the watershed thresholds searched on them (seedsearch)."""
    started = time.process_time()
    items = []
    for image, raster, truth, region in labelled_regions(predictions.images, truth_for):
        probs = np.concatenate([p.astype(np.float32) for _, p in stream_probs(
            predictions.ensemble, raster, predictions.settings, predictions.device, region=region)], axis=1)
        items.append((image.id, probs, truth.read_instances(region)))
    result = search_seeds(lambda: items, predictions.targets, predictions.settings.seeds)
    result["cpu_seconds"] = round(time.process_time() - started, 1)
    return result


def save_seed_defaults(run_dir: Path, result: dict, config: Config | None = None) -> Path:
    """The searched watershed thresholds as the run's infer defaults, as save_infer_defaults does."""
    (before, scores_before), (after, scores_after) = result["before"], result["after"]

    def keys(s):
        return {"threshold": s.mask, "seed_threshold": s.seed, "seed_border": s.border}

    return _save_search(run_dir, keys(after), {**keys(before), **scores_before}, {**keys(after), **scores_after},
                        config)


def run_search(predictions: RunPredictions, truth_for, tile_px: int) -> dict:
    """Search post-processing on the views; returns the postsearch result plus timings."""
    started = time.process_time()
    views = predictions.predict_views()
    settings = predictions.settings
    base = PostSetting(tuple(views), float(settings.threshold), int(settings.min_object_px), bool(settings.fill_holes))
    result = search_postprocess(predictions.search_items(truth_for, tile_px), base)
    result["cpu_seconds"] = round(time.process_time() - started, 1)
    return result


def save_infer_defaults(run_dir: Path, result: dict, config: Config | None = None) -> Path:
    """The searched setting as the run's infer defaults (config.yaml), the search recorded in run.json.
    ``config``: the settings the search ran under (evaluate --set); its infer keys that differ from the
    run's are saved with the searched ones, so `infer --run` reproduces the searched score."""
    (before, dice_before), (after, dice_after) = result["before"], result["after"]

    def keys(s):
        return {"tta": s.tta_spec(), "threshold": s.threshold, "min_object_px": s.min_px}

    return _save_search(run_dir, keys(after), {**keys(before), "dice": dice_before}, {**keys(after), "dice": dice_after},
                        config)


def _save_search(run_dir: Path, infer_keys: dict, before: dict, after: dict, searched_under: Config | None) -> Path:
    """``infer_keys`` (infer.KEY: value) into the run's config.yaml, over the infer section the search ran
    under (``searched_under``, default the run's own); before/after recorded in run.json."""
    config = load_config(run_dir / "config.yaml")
    if searched_under is not None:
        config = dataclasses.replace(config, infer=dataclasses.replace(searched_under.infer))
    updated = load_config(None, [f"infer.{key}={value}" for key, value in infer_keys.items()], base=config)
    save_config(updated, run_dir / "config.yaml")
    update_run_info(run_dir, infer_search={"before": before, "after": after, "searched": time.time()})
    return run_dir / "config.yaml"
