"""`segkit suggest`: the regions worth annotating next, for QuPath, QGIS and the next `segkit train`.

One pass of the run's predictor over each image (segkit.infer.members: the ensemble mean, its
entropy and its members' disagreement from the same forward passes) fills a coarse grid of region
scores; square candidates over the usable (tissue) area are ranked, picked apart from each other
and from the regions the run's manifest already labels (segkit.workflows.picks), optionally spread
in encoder-feature space. Outputs, committed together or not at all:

    OUT/ID.geojson   the picks on image ID as QuPath annotations classified Review (rank, score)
    OUT/rows.csv     one manifest row per pick: its region, and the label file the annotator exports
    OUT/montage.png  the picks, ranked, with the current prediction over them
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from segkit.data.manifest import ManifestRow, write_manifest
from segkit.data.windows import tissue_mask
from segkit.ground.config import Config
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.members import ScoreGrid, UncertaintyPredictor, score_channels
from segkit.infer.predict import predict_strips
from segkit.infer.run import Ensemble, Settings, check_channels
from segkit.io.atomic import check_output, write_bytes
from segkit.io.images.raster import open_raster
from segkit.io.writers.review import write_review
from segkit.models.activation import output_activation
from segkit.report.montage import montage_png
from segkit.runs.rundir import read_jsonl
from segkit.workflows.features import labelled_features, pooled_features, prediction_panels
from segkit.workflows.picks import Candidate, candidates, k_centre, pick_apart

CELLS_PER_REGION = 4  # candidates step by a quarter of the region


@dataclass(frozen=True)
class SuggestOptions:
    """The label.* keys suggest reads (their help: ground/settings.py), plus the usable-area method
    (None: every pixel is usable) and the GeoJSON frame (infer.geojson_crs)."""

    regions: int
    region_px: int
    score: str
    diverse: bool
    pool: int
    min_tissue: float
    label_path: str
    tissue: Optional[str]
    geojson_crs: str

    @classmethod
    def from_config(cls, config: Config) -> "SuggestOptions":
        lab = config.label
        tissue = config.data.tissue if config.data.tissue != "none" else None
        return cls(lab.regions, lab.region_px, lab.score, lab.diverse, lab.pool, lab.min_tissue, lab.label_path,
                   tissue, config.infer.geojson_crs)


@dataclass
class Pick:
    image_id: str
    image: Path
    window: Window
    score: float
    entropy: float
    disagreement: float


def check_history(run_dir: Path) -> None:
    """A run to suggest from has been validated: its metrics.jsonl holds a val_ score."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not any(key.startswith("val_") for record in records for key in record):
        raise SegkitError(f"{run_dir}: no validation history (metrics.jsonl has no val_ score); suggest ranks by "
                          "the uncertainty of a run validated on labelled regions: train with validation rows first")


def labelled_windows(rows: list[ManifestRow], images: list[tuple[str, Path]]) -> dict[int, list[Window]]:
    """Image index -> windows the manifest already labels (a row without a region labels all of it)."""
    index = {str(Path(path).resolve()): k for k, (_, path) in enumerate(images)}
    taken: dict[int, list[Window]] = {}
    for row in rows:
        k = index.get(str(Path(row.image).resolve()))
        if k is not None and row.label is not None:
            taken.setdefault(k, []).append(row.region or Window(0, 0, 2**31 - 1, 2**31 - 1))
    return taken


def check_images(ensemble: Ensemble, images: list[tuple[str, Path]], options: SuggestOptions) -> None:
    """Every header before any prediction: bands, region size, and room for the regions asked."""
    room = 0
    for _, path in images:
        raster = open_raster(path)
        check_channels(raster, ensemble.preprocess)
        if options.region_px > min(raster.height, raster.width):
            raise SegkitError(f"{path}: label.region_px {options.region_px} is larger than the image "
                              f"({raster.height}x{raster.width} px)")
        room += (raster.height // options.region_px) * (raster.width // options.region_px)
    if options.regions > room:
        raise SegkitError(f"label.regions {options.regions}: at most {room} regions of {options.region_px} px fit "
                          f"in the {len(images)} image(s); ask for fewer or smaller regions")


def usable_cells(raster, method: Optional[str], shape: tuple[int, int]) -> tuple[np.ndarray, Optional[tuple]]:
    """(share of each grid cell that is tissue, the thumbnail mask for predict_strips or None)."""
    if method is None:
        return np.ones(shape, np.float64), None
    from segkit.data.grids import THUMB_SIDE

    thumb, scale = raster.thumbnail(THUMB_SIDE)
    mask = tissue_mask(thumb, method=method)
    share = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.clip(share, 0, 1).astype(np.float64), (mask, float(scale))


def score_image(ensemble: Ensemble, raster, settings: Settings, device: torch.device, cell_px: int,
                tissue: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    """((2, rows, cols) cell means of entropy and disagreement, (rows, cols) usable share)."""
    grid = ScoreGrid(raster.height, raster.width, cell_px)
    usable, thumb = usable_cells(raster, tissue, grid.shape)
    predictor = UncertaintyPredictor(ensemble.models, settings.tta, amp=settings.amp,
                                     activation=output_activation(ensemble.classes, ensemble.targets))
    strips = predict_strips(predictor, raster, fov_px=ensemble.fov_px, size=ensemble.size,
                            overlap_px=settings.overlap_px, preprocess=ensemble.preprocess, blend=settings.blend,
                            batch_size=settings.batch_size, device=device, progress=settings.progress,
                            margin_px=settings.margin_px, tissue=thumb)
    for row0, strip in strips:
        grid.add(row0, strip[-2:])
    return grid.mean(), usable


def suggest_regions(ensemble: Ensemble, images: list[tuple[str, Path]], taken: dict[int, list[Window]],
                    options: SuggestOptions, settings: Settings, device: torch.device) -> list[Pick]:
    """The picks, best first (an error when fewer than label.regions fit)."""
    cell = max(1, options.region_px // CELLS_PER_REGION)
    pool, parts = [], {}
    for k, (image_id, path) in enumerate(images):
        raster = open_raster(path)
        means, usable = score_image(ensemble, raster, settings, device, cell, options.tissue)
        parts[k] = means
        score = means[score_channels(options.score)].mean(axis=0)
        pool += candidates(score, usable, image=k, cell_px=cell, region_px=options.region_px,
                           height=raster.height, width=raster.width, min_usable=options.min_tissue)
    wanted = options.regions * (options.pool if options.diverse else 1)
    chosen = pick_apart(pool, wanted, taken)
    if len(chosen) < options.regions:
        raise SegkitError(f"label.regions {options.regions}: only {len(chosen)} regions of {options.region_px} px "
                          "fit apart in the usable area outside the labelled regions; ask for fewer or smaller ones")
    if options.diverse:
        chosen = _diverse(ensemble, images, chosen, taken, options.regions, device)
    return [_pick(images, c, parts[c.image], cell) for c in chosen]


def _diverse(ensemble, images, chosen: list[Candidate], taken, count: int, device) -> list[Candidate]:
    """k-centre over the pooled encoder features of the best-scored candidates, labelled regions as
    the first centres; the result is ranked by score again."""
    features = pooled_features(ensemble, [(images[c.image][1], c.window) for c in chosen], device)
    centres = labelled_features(ensemble, images, taken, device)
    keep = k_centre(features, count, first=0, centres=centres)
    return sorted((chosen[i] for i in keep), key=lambda c: -c.score)


def _pick(images, cand: Candidate, means: np.ndarray, cell: int) -> Pick:
    w = cand.window
    block = means[:, w.row // cell: -(-w.bottom // cell), w.col // cell: -(-w.right // cell)]
    image_id, path = images[cand.image]
    return Pick(image_id, Path(path), w, cand.score, float(block[0].mean()), float(block[1].mean()))


def output_paths(out_dir: Path, images: list[tuple[str, Path]]) -> dict:
    return {"geojson": {image_id: out_dir / f"{image_id}.geojson" for image_id, _ in images},
            "rows": out_dir / "rows.csv", "montage": out_dir / "montage.png"}


def check_outputs(paths: dict, overwrite: bool) -> None:
    for path in [*paths["geojson"].values(), paths["rows"], paths["montage"]]:
        check_output(path, overwrite)


def write_suggestions(picks: list[Pick], paths: dict, panels: list[np.ndarray], options: SuggestOptions,
                      overwrite: bool) -> list[Path]:
    """The GeoJSON per image, the manifest rows and the montage (atomic; inside staged_commits
    they land together)."""
    written = []
    for image_id, path in paths["geojson"].items():
        mine = [(rank, p) for rank, p in enumerate(picks, 1) if p.image_id == image_id]
        if not mine:
            continue
        raster = open_raster(mine[0][1].image)
        values = [{"Rank": rank, "Score": p.score, "Entropy": p.entropy, "Disagreement": p.disagreement}
                  for rank, p in mine]
        written.append(write_review(path, [p.window for _, p in mine], values,
                                    names=[f"suggest {rank}" for rank, _ in mine], geojson_crs=options.geojson_crs,
                                    crs=raster.crs, transform=raster.transform, overwrite=overwrite))
    out_dir = paths["rows"].parent
    rows = [ManifestRow(id=f"{p.image_id}_r{p.window.row}_c{p.window.col}", image=p.image,
                        label=str(out_dir / options.label_path.replace("{id}", p.image_id)), region=p.window)
            for p in picks]
    written.append(write_manifest(rows, paths["rows"]))
    written.append(write_bytes(paths["montage"], montage_png(panels), overwrite=overwrite))
    return written


def suggest(ensemble: Ensemble, images: list[tuple[str, Path]], labelled: list[ManifestRow], out_dir: Path,
            options: SuggestOptions, settings: Settings, device: torch.device, overwrite: bool = False
            ) -> tuple[list[Pick], list[Path]]:
    """Check, score, pick and write (see the module doc); returns (picks best first, files written)."""
    paths = output_paths(Path(out_dir), images)
    check_outputs(paths, overwrite)
    check_images(ensemble, images, options)
    picks = suggest_regions(ensemble, images, labelled_windows(labelled, images), options, settings, device)
    panels = prediction_panels(ensemble, picks, settings, device)
    return picks, write_suggestions(picks, paths, panels, options, overwrite)
