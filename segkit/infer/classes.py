"""`segkit infer --task cls`: run directories + images (or manifest rows) -> a CSV of classes.

Part of the infer entry (a composition root, with segkit.infer.run): it reads run configs;
everything it calls takes explicit arguments. Rows are predicted by the classification
predictor (checkpoint and run ensembles, TTA views, optional temperature) and written as
``id,label`` (+ one probability column per class) through segkit.io.class_table, atomically.

Calibration (``--calibrate``): the temperature is fitted on the run's own validation rows with
the same checkpoints and TTA views as this inference, saved in RUN/calibration.json (refitted
when the checkpoints or views differ) and applied to every member's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from segkit.data.classes import resolve_classes
from segkit.data.cls_dataset import RasterCache, read_row
from segkit.data.manifest import ManifestRow, _stem
from segkit.data.split import FoldSpec, load_rows, split_rows
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.infer.calibrate import ensemble_probs, fit_temperature, load_calibration, nll, save_calibration
from segkit.infer.classify import predict_class_logits
from segkit.infer.run import Ensemble, check_channels
from segkit.infer.tta import parse_tta
from segkit.io.atomic import check_output
from segkit.io.class_table import write_class_table
from segkit.metrics.cls import expected_calibration_error


@dataclass
class ClassSettings:
    tta: str = "none"
    batch_size: int = 64
    amp: bool = False


def image_rows(paths: Sequence[Path]) -> list[ManifestRow]:
    """One row per image file (id = file stem, as Kaggle submissions expect); stems must be unique."""
    rows = [ManifestRow(id=_stem(Path(p)), image=Path(p)) for p in paths]
    ids = [row.id for row in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise SegkitError(f"images share an id (file stem): {', '.join(repeated[:5])}")
    for row in rows:
        if not row.image.is_file():
            raise SegkitError(f"{row.image}: image file not found")
    return rows


def predict_logits(ensemble: Ensemble, rows: Sequence[ManifestRow], settings: ClassSettings,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(logits (members, rows, classes), member weights) of the ensemble x TTA views over ``rows``."""
    cache = RasterCache()

    def read(row: ManifestRow) -> np.ndarray:
        check_channels(cache.get(row.image), ensemble.preprocess)  # an image with other bands: one line, named
        return read_row(cache, row, ensemble.size)

    return predict_class_logits(ensemble.models, list(rows), read=read,
                                preprocess=ensemble.preprocess, tta=parse_tta(settings.tta),
                                batch_size=settings.batch_size, device=device, amp=settings.amp)


def validation_rows(config: Config) -> list[ManifestRow]:
    """The rows a cls run validated on (its manifest, classes and fold settings)."""
    d = config.data
    rows, _ = resolve_classes(load_rows(d.manifest), d.class_names, str(d.manifest), task="cls")
    spec = FoldSpec(d.folds, d.fold_method, d.val_fold, config.run.seed)
    _, val = split_rows(rows, spec, task="cls", options=None, where=str(d.manifest))
    if not val:
        raise SegkitError(f"{d.manifest}: the run validates on fold {d.val_fold}, which holds no rows "
                          "(--calibrate, oof and evaluate --run need them)")
    return val


def run_temperature(run_dir: Path, ensemble: Ensemble, settings: ClassSettings, device: torch.device) -> float:
    """The run's saved temperature for these checkpoints and views, or a new fit on its validation rows."""
    key = {"checkpoints": [p.name for p in ensemble.checkpoints], "tta": str(settings.tta)}
    saved = load_calibration(run_dir)
    if saved is not None and all(saved.get(k) == v for k, v in key.items()):
        return float(saved["temperature"])
    rows = validation_rows(load_config(run_dir / "config.yaml"))
    logits, weights = predict_logits(ensemble, rows, settings, device)
    targets = np.array([int(row.target) for row in rows])
    temperature = fit_temperature(logits, weights, targets)
    before, after = ensemble_probs(logits, weights), ensemble_probs(logits, weights, temperature)
    save_calibration(run_dir, {
        **key, "temperature": temperature, "rows": len(rows),
        "nll_before": nll(before, targets), "nll_after": nll(after, targets),
        "ece_before": expected_calibration_error(before, targets), "ece_after": expected_calibration_error(after, targets),
    })
    return temperature


def infer_classes(ensemble: Ensemble, rows: Sequence[ManifestRow], csv_path: Path, class_names: Sequence[str], *,
                  settings: ClassSettings, device: torch.device, with_probs: bool = False,
                  temperature: float = 1.0, overwrite: bool = False) -> Path:
    """Predict ``rows`` and write ``id,label[,<class>...]`` to ``csv_path`` (checked before any work)."""
    check_output(csv_path, overwrite)
    if len(class_names) != ensemble.classes:
        raise SegkitError(f"the run names {len(class_names)} classes for a model with {ensemble.classes} outputs")
    logits, weights = predict_logits(ensemble, rows, settings, device)
    probs = ensemble_probs(logits, weights, temperature)
    return write_class_table(csv_path, [row.id for row in rows], probs, list(class_names), with_probs=with_probs,
                             overwrite=overwrite)


def check_task(config: Config, run_dir: Path, wanted: Optional[str], seg_outputs: bool, csv: bool) -> str:
    """The run's task, checked against --task and the outputs asked for (one-line errors)."""
    task = config.task
    if wanted is not None and wanted != task:
        raise SegkitError(f"{run_dir}: is a {task} run; it cannot run --task {wanted}")
    if task == "cls" and seg_outputs:
        raise SegkitError(f"{run_dir}: is a cls run (one class per image); write classes with --csv OUT.csv, "
                          "not --rle/--polygons/--mask")
    if task != "cls" and csv:
        raise SegkitError(f"{run_dir}: is a {task} run; --csv writes image classes of a cls run "
                          "(use --rle, --polygons, --mask or --probs)")
    return task
