"""`segkit pseudo`: pseudo-label rasters from a run's confident predictions, the rest left unlabelled.

Per image, streamed strip by strip (memory as for `segkit infer`):

    OUT/ID.pseudo.tif   uint8: 0 confident background, class ids where confident, 255 (IGNORE_INDEX,
                        also the TIFF's nodata) where the model is unsure; thresholds in its tags
    OUT/ID.pseudo.json  the thresholds, the run and checkpoints, the share of pixels kept per value
    OUT/rows.csv        one manifest row per image pointing at its pseudo-label, with label.weight

Binary runs: probability >= high is foreground, <= low background, between them ignored.
Multiclass runs: a pixel keeps its argmax class when that class's probability is >= high (low is
not used). Training skips the ignored pixels (the mask losses' ignore_index), and the rows' weight
sets how often their windows are drawn next to the truly labelled rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segkit.data.manifest import ManifestRow, write_manifest
from segkit.ground.errors import SegkitError
from segkit.ground.ignore import IGNORE_INDEX
from segkit.infer.run import Ensemble, Settings, check_channels, stream_probs
from segkit.io.atomic import check_output, write_json
from segkit.io.images.raster import open_raster
from segkit.io.writers.strips import TiffStripWriter


@dataclass(frozen=True)
class PseudoOptions:
    low: float
    high: float
    weight: float


def pseudo_strip(probs: np.ndarray, low: float, high: float) -> np.ndarray:
    """(C, h, w) probabilities -> (h, w) uint8 pseudo-labels (see the module doc)."""
    if probs.shape[0] == 1:
        p = probs[0]
        out = np.full(p.shape, IGNORE_INDEX, np.uint8)
        out[p <= low] = 0
        out[p >= high] = 1
        return out
    best = probs.argmax(axis=0).astype(np.uint8)
    return np.where(probs.max(axis=0) >= high, best, np.uint8(IGNORE_INDEX)).astype(np.uint8)


def _paths(out_dir: Path, image_id: str) -> tuple[Path, Path]:
    return out_dir / f"{image_id}.pseudo.tif", out_dir / f"{image_id}.pseudo.json"


def check_pseudo(ensemble: Ensemble, images: list[tuple[str, Path]], out_dir: Path, overwrite: bool) -> None:
    """Refuse what cannot work before any prediction: object runs, other band counts, existing outputs."""
    if ensemble.targets:
        raise SegkitError("pseudo: the run predicts instance targets (objects); pseudo-labels are class masks")
    for image_id, path in images:
        check_channels(open_raster(path), ensemble.preprocess)
        for target in _paths(out_dir, image_id):
            check_output(target, overwrite)
    check_output(out_dir / "rows.csv", overwrite)


def pseudo_image(ensemble: Ensemble, image_id: str, path: Path, out_dir: Path, options: PseudoOptions,
                 settings: Settings, device: torch.device, overwrite: bool) -> list[Path]:
    """One image's pseudo-label TIFF and its sidecar JSON."""
    raster = open_raster(path)
    tif, sidecar = _paths(out_dir, image_id)
    counts = np.zeros(256, np.int64)
    tags = {"segkit_pseudo_low": options.low, "segkit_pseudo_high": options.high,
            "segkit_ignore_index": IGNORE_INDEX}
    with TiffStripWriter(tif, raster.height, raster.width, crs=raster.crs, transform=raster.transform,
                         overwrite=overwrite, nodata=IGNORE_INDEX, tags=tags) as writer:
        for _, probs in stream_probs(ensemble, raster, settings, device):
            strip = pseudo_strip(probs, options.low, options.high)
            counts += np.bincount(strip.ravel(), minlength=256)
            writer.write(strip)
    total = max(int(counts.sum()), 1)
    shares = {("ignored" if v == IGNORE_INDEX else f"class {v}"): round(int(counts[v]) / total, 6)
              for v in np.flatnonzero(counts)}
    record = {"image": str(path), "low": options.low, "high": options.high, "ignore_index": IGNORE_INDEX,
              "rule": "binary: p >= high -> 1, p <= low -> 0; multiclass: argmax where its p >= high; else ignored",
              "checkpoints": [str(p) for p in ensemble.checkpoints], "tta": settings.tta, "shares": shares}
    return [tif, write_json(sidecar, record, overwrite=overwrite)]


def pseudo(ensemble: Ensemble, images: list[tuple[str, Path]], out_dir: Path, options: PseudoOptions,
           settings: Settings, device: torch.device, overwrite: bool = False) -> list[Path]:
    """Pseudo-labels of every image and the manifest rows that train on them; returns the files."""
    out_dir = Path(out_dir)
    check_pseudo(ensemble, images, out_dir, overwrite)
    written, rows = [], []
    for image_id, path in images:
        files = pseudo_image(ensemble, image_id, path, out_dir, options, settings, device, overwrite)
        written += files
        rows.append(ManifestRow(id=f"{image_id}_pseudo", image=Path(path), label=str(files[0]),
                                weight=options.weight))
    written.append(write_manifest(rows, out_dir / "rows.csv"))
    return written
