"""`segkit infer`: run directories + images -> RLE CSV / GeoJSON / mask and probability TIFFs.

The infer entry (a composition root): it reads run configs; everything it calls takes explicit
arguments.

Each image streams through the predictor as finished row strips; every output consumes the
strips as they come, so no full-resolution float image is ever held. All outputs are atomic:
an error or Ctrl-C leaves none of them behind.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from segkit.data.preprocess import Preprocess
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.gate import GatedPredictor
from segkit.data.targets import parse_targets
from segkit.infer.instances import check_instance_outputs, infer_objects
from segkit.infer.predict import predict_strips
from segkit.infer.outputs import WriterOptions, check_georeferenced, open_image_writers
from segkit.io.atomic import check_output
from segkit.io.images.raster import open_raster
from segkit.io.writers.strips import RleStripWriter
from segkit.models.activation import output_activation
from segkit.models.factory import create_model
from segkit.post.morphology import StripPostProcessor
from segkit.post.morphology import threshold as threshold_probs
from segkit.post.watershed import SeedSettings
from segkit.runs import checkpoint as ckpt
from segkit.runs.rundir import read_run_info


@dataclass
class Ensemble:
    """Models with weights summing to 1 that share one preprocessing and one geometry.

    Each run given to `infer` weighs the same whatever its number of checkpoints: a run with
    three averaged checkpoints counts as much as a run with one (within a run the checkpoints
    share its weight equally).
    """

    models: list[tuple[torch.nn.Module, float]]
    preprocess: Preprocess  # or any callable raw HWC -> float32 HWC (see Preprocess)
    fov_px: int
    size: int
    classes: int
    checkpoints: list[Path] = field(default_factory=list)
    targets: tuple = ()  # instance target names (body, border, contact): outputs are watershed objects
    small_images: str = "pad"  # data.small_images of the runs: how images that fit in one tile are read


def _run_model(config: Config, in_channels: int, state: dict, device: torch.device) -> torch.nn.Module:
    model = create_model(
        config.model.arch, config.model.encoder, None,
        in_channels=in_channels, classes=config.model.classes, task=config.task,
    )
    model.load_state_dict(state)
    return model.to(device).to(memory_format=torch.channels_last).eval()


def load_ensemble(run_dirs: list[Path], epochs: str, device: torch.device, soup: bool = False) -> Ensemble:
    """The chosen checkpoints (``epochs``: last:K, best, all, 8,9,10) of one or more runs.

    ``soup`` averages the weights of all chosen checkpoints into one model instead of averaging
    their predictions. Runs must agree on field of view, size, classes and channels.
    """
    members, reference = [], None  # (checkpoint, config, in_channels, weight)
    for run_dir in run_dirs:
        info = read_run_info(run_dir)
        config = load_config(run_dir / "config.yaml")
        preprocess = Preprocess.load(run_dir / "preprocess.json")
        geometry = (config.data.fov_px, config.data.size, config.model.classes, preprocess.to_dict())
        if reference is None:
            reference = (config, preprocess, geometry)
        elif geometry != reference[2]:
            raise SegkitError(f"{run_dir}: field of view, size, classes or channels differ from {run_dirs[0]}")
        chosen = ckpt.run_checkpoints(run_dir, epochs)
        members += [(path, config, info["in_channels"], 1.0 / (len(run_dirs) * len(chosen))) for path in chosen]
    config, preprocess, _ = reference
    states = [ckpt.load_checkpoint(path)["model"] for path, _, _, _ in members]
    if soup:
        models = [(_run_model(config, members[0][2], ckpt.average_state_dicts(states), device), 1.0)]
    else:
        models = [(_run_model(cfg, ch, state, device), weight)
                  for (_, cfg, ch, weight), state in zip(members, states)]
    return Ensemble(models, preprocess, config.data.fov_px, config.data.size, config.model.classes,
                    [path for path, _, _, _ in members], targets=parse_targets(config.data.targets),
                    small_images=config.data.small_images)


@dataclass
class Outputs:
    """Where results go; with several images the per-image paths must contain '{id}'."""

    rle: Optional[Path] = None
    polygons: Optional[str] = None
    mask: Optional[str] = None
    probs: Optional[str] = None
    overwrite: bool = False
    instances: Optional[str] = None  # instance runs: uint32 object-id TIFF
    resume: bool = False  # skip images whose outputs a killed run wrote (segkit.infer.folder)

    def per_image(self, template: Optional[str], image_id: str, n_images: int) -> Optional[Path]:
        if template is None:
            return None
        if n_images > 1 and "{id}" not in template:
            raise SegkitError(f"{template}: several images need '{{id}}' in the output path")
        return Path(template.replace("{id}", image_id))

    def check(self, image_ids: list[str]) -> None:
        """Refuse existing outputs before any work, so a long run cannot fail at its very end."""
        paths = [self.rle] if self.rle else []
        for template in (self.polygons, self.mask, self.probs, self.instances):
            paths += [self.per_image(template, i, len(image_ids)) for i in image_ids] if template else []
        for path in paths:
            if not (self.resume and path != self.rle and path.exists()):  # under --resume: a finished image
                check_output(path, self.overwrite)
        if not paths:
            raise SegkitError("no output chosen: give --rle, --polygons, --mask, --probs or --instances")


@dataclass(frozen=True)
class Settings:
    """What the streaming predictor and the writers need of a config, resolved once by
    :func:`infer_settings` (each field's meaning and default: the infer.* keys of ground/settings.py)."""

    overlap_px: Optional[int]  # None: a quarter of the kept tile (predict_strips)
    blend: str
    tta: str
    threshold: float
    batch_size: Optional[int]  # None: by device (segkit.runs.device.infer_batch_size)
    amp: bool  # train.amp
    rle_order: str
    min_object_px: int
    fill_holes: bool
    crf: Optional[dict]  # None: no CRF (the --crf switch), else infer.crf's parameters
    progress: bool  # run.progress
    margin_px: int
    tissue: Optional[str]  # skip_background's thumbnail method resolved; None: every tile is run
    writing: WriterOptions
    cls_gate: Optional[float]
    seeds: SeedSettings  # instance runs: the watershed's thresholds
    rle_per_object: bool


def infer_settings(config: Config, *, crf: bool = False) -> Settings:
    """The settings of `segkit infer` from a run's config with the command's overrides."""
    i = config.infer
    return Settings(
        overlap_px=i.overlap_px, blend=i.blend, tta=i.tta, threshold=i.threshold, batch_size=i.batch_size,
        amp=config.train.amp, rle_order=i.rle_order, min_object_px=i.min_object_px, fill_holes=i.fill_holes,
        crf=(i.crf or {}) if crf or i.use_crf else None, progress=config.run.progress, margin_px=i.margin_px,
        tissue=tissue_method(config), writing=WriterOptions.from_config(config), cls_gate=i.cls_gate,
        rle_per_object=i.rle_per_object, seeds=SeedSettings(mask=i.threshold, seed=i.seed_threshold,
                                                            border=i.seed_border),
    )


def tissue_method(config: Config) -> Optional[str]:
    """The thumbnail method of `infer.skip_background` (None when off); `auto` follows the run's data.tissue."""
    if not config.infer.skip_background:
        return None
    if config.infer.tissue != "auto":
        return config.infer.tissue
    return config.data.tissue if config.data.tissue != "none" else "saturation"


def tissue_grid(raster, method: str) -> tuple:
    """(bool mask of the thumbnail's tissue, source px per mask px) for predict_strips(tissue=...)."""
    from segkit.data.grids import THUMB_SIDE
    from segkit.data.windows import tissue_mask

    thumb, scale = raster.thumbnail(THUMB_SIDE)
    return tissue_mask(thumb, method=method), float(scale)


def infer_images(
    ensemble: Ensemble, images: list[tuple[str, Path]], outputs: Outputs, settings: Settings, device: torch.device
) -> list[Path]:
    """Predict every image and write the chosen outputs; returns the files written (by every rank).

    Under torchrun (segkit.runs.distributed.setup() called), image i goes to rank i % world:
    each rank writes its images' mask/probs/polygons files itself (atomically); the RLE rows are
    gathered to rank 0, which writes the one CSV in input order. If any rank fails, every rank
    removes the files it wrote and the error is raised on all of them. In one process the images
    stream through segkit.infer.folder (small images batched, RLE rows written as they finish, --resume).
    """
    from segkit.runs import distributed as dist

    check_instance_outputs(ensemble.targets, outputs.instances, settings.rle_per_object,
                           str(ensemble.checkpoints[0].parent.parent) if ensemble.checkpoints else "")
    outputs.check([image_id for image_id, _ in images])
    if dist.world_size() == 1:  # one process: headers cached, small images batched, resumable (infer/folder.py)
        from segkit.infer.folder import infer_one_process

        return infer_one_process(ensemble, images, outputs, settings, device)
    if outputs.resume:
        raise SegkitError("--resume: one process only (not under torchrun)")
    for _, path in images:  # every header before any prediction: a bad image fails in seconds
        raster = open_raster(path)
        check_channels(raster, ensemble.preprocess)
        if outputs.polygons:
            check_georeferenced(raster, settings.writing)
    dist.barrier()  # every rank has checked the outputs before any rank writes one
    rank, world = dist.rank(), dist.world_size()
    mine = [(index, image) for index, image in enumerate(images) if index % world == rank]
    rows, written, failure = [], [], None
    with contextlib.ExitStack() as stack:
        rle_writer = None
        if outputs.rle is not None and rank == 0:  # opened first: an unwritable folder fails before any work
            rle_writer = stack.enter_context(RleStripWriter(
                outputs.rle, header=settings.writing.rle_header, overwrite=outputs.overwrite,
                empty=settings.writing.rle_empty))
        try:
            for index, (image_id, path) in mine:
                rle, paths = _infer_one(ensemble, image_id, path, len(images), outputs, settings, device)
                rows.append((index, image_id, rle))
                written += paths
        except Exception as exc:
            if world == 1:
                raise
            failure = f"rank {rank}: {exc}"
        gathered = dist.all_gather_objects((rows, [str(p) for p in written], failure))
        failures = [f for _, _, f in gathered if f]
        if failures:
            for path in written:
                Path(path).unlink(missing_ok=True)
            raise SegkitError(failures[0])
        if rle_writer is not None:
            for _, image_id, rle in sorted((row for part, _, _ in gathered for row in part), key=lambda r: r[0]):
                for text in (rle or [""]) if isinstance(rle, list) else [rle]:  # per object: one row each
                    rle_writer.write_row(image_id, text)
    everything = [Path(p) for _, paths, _ in gathered for p in paths]
    return ([outputs.rle] if outputs.rle is not None else []) + everything


def _infer_one(ensemble: Ensemble, image_id: str, path: Path, n_images: int, outputs: Outputs,
               settings: Settings, device: torch.device) -> tuple[Optional[str], list[Path]]:
    """One image through the predictor into its own files; returns (its RLE or None, files written)."""
    raster = open_raster(path)
    strips = stream_probs(ensemble, raster, settings, device)
    if ensemble.targets:  # instance run: watershed objects (segkit.infer.instances)
        paths = {kind: outputs.per_image(getattr(outputs, kind), image_id, n_images)
                 for kind in ("instances", "polygons", "mask", "probs")}
        return infer_objects(strips, path, {**paths, "rle": outputs.rle is not None}, ensemble.targets, settings,
                             outputs.overwrite)
    masks = post_process(strips, raster, ensemble.preprocess, settings, ensemble.classes)
    encoder = None
    if outputs.rle is not None:
        from segkit.io.rle import RleStripEncoder

        encoder = RleStripEncoder(raster.height, raster.width, order=settings.rle_order)
    paths = _write_image(masks, raster, image_id, n_images, encoder, outputs, settings, ensemble.classes)
    return (encoder.finish() if encoder is not None else None), paths


def stream_probs(ensemble: Ensemble, raster, settings: Settings, device: torch.device, *,
                 region: Optional[Window] = None, tta=None):
    """(row0, probs) strips of `region` (default: the whole image) with the settings' tiling and TTA
    (`tta`, a spec or (view, weight) pairs, overrides it: e.g. [("hflip", 1.0)] for one view alone)."""
    activation = output_activation(ensemble.classes, ensemble.targets)
    views = settings.tta if tta is None else tta
    if settings.cls_gate is not None:  # seg+cls: tiles the class head calls empty skip the decoder
        predictor = GatedPredictor(ensemble.models, views, gate=settings.cls_gate, classes=ensemble.classes,
                                   activation=activation, amp=settings.amp)
    else:
        predictor = EnsemblePredictor(ensemble.models, views, activation=activation, amp=settings.amp)
    return predict_strips(
        predictor, raster, fov_px=ensemble.fov_px, size=ensemble.size, overlap_px=settings.overlap_px,
        preprocess=ensemble.preprocess, blend=settings.blend, batch_size=settings.batch_size, device=device,
        region=region or Window(0, 0, raster.height, raster.width), progress=settings.progress,
        margin_px=settings.margin_px,
        tissue=tissue_grid(raster, settings.tissue) if settings.tissue else None,
    )


def check_channels(raster, preprocess) -> None:
    """The image must have the bands the run's channel spec reads (and no more).

    A preprocess that is not a segkit Preprocess (your own callable) is trusted as is."""
    if not isinstance(preprocess, Preprocess):
        return
    bands = max(spec.band for spec in preprocess.channels) + 1
    if raster.channels != bands:
        raise SegkitError(f"{raster.path}: has {raster.channels} channel(s) but the run's channel spec reads {bands}")


def post_process(strips, raster, preprocess: Preprocess, settings: Settings, classes: int,
                 region: Optional[Window] = None):
    """(row0, probs) strips of `region` (default: the whole image) -> (row0, mask, probs) strips:
    CRF, threshold, small objects, holes."""
    region = region or Window(0, 0, raster.height, raster.width)
    if settings.crf is not None:
        from segkit.post.crf import CrfStripProcessor

        def read_image(window):
            return preprocess.stack(raster.read(Window(window.row + region.row, window.col + region.col,
                                                       window.height, window.width)))

        refine = CrfStripProcessor(region.height, region.width, read_image=read_image, **settings.crf)
        strips = refine(strips)
    # Binary: probability >= threshold; multiclass: argmax over classes (channel 0 = background).
    cut = settings.threshold if classes == 1 else None
    masks = ((row0, threshold_probs(probs, cut), probs) for row0, probs in strips)
    if settings.min_object_px > 1 or settings.fill_holes:
        masks = StripPostProcessor(
            region.height, region.width, min_px=settings.min_object_px, fill=settings.fill_holes
        )(masks)
    return masks


def _write_image(strips, raster, image_id, n_images, rle_encoder, outputs: Outputs, settings: Settings, classes: int):
    paths = {kind: outputs.per_image(getattr(outputs, kind), image_id, n_images) for kind in ("mask", "probs", "polygons")}
    with contextlib.ExitStack() as stack:
        writers = open_image_writers(stack, paths, raster, classes, settings.writing, outputs.overwrite)
        if rle_encoder is not None:
            writers.append((rle_encoder, lambda w, mask, probs: w.add(np.asarray(mask) != 0)))
        for _, mask, probs in strips:
            for writer, write in writers:
                write(writer, mask, probs)
    return [path for path in paths.values() if path]


def image_list(paths: list[Path]) -> list[tuple[str, Path]]:
    """(id, path) per input image; the id is the file stem, as Kaggle submissions expect."""
    images = [(Path(p).stem, Path(p)) for p in paths]
    counts = Counter(image_id for image_id, _ in images)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise SegkitError(f"images share an id (file stem): {', '.join(duplicates[:5])}"
                          + (f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""))
    return images
