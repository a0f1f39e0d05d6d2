"""`segkit evaluate --run CLS_RUN`: a cls run's validation rows predicted as `infer --task cls` predicts them.

The rows are the run's own validation fold (its manifest, resolved class names and fold
settings, segkit.infer.classes.validation_rows); the checkpoints, TTA views and batch size are
its infer settings, through the one classification predictor, so the scores are those of
`segkit infer --task cls --csv` on the same rows scored as a file. A saved temperature
(`--calibrate`) is not applied: it rescales probabilities and changes no label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from segkit.ground.config import Config, load_config
from segkit.infer.calibrate import ensemble_probs
from segkit.infer.classes import ClassSettings, predict_logits, validation_rows
from segkit.infer.run import load_ensemble
from segkit.report.cls_report import ClassRows
from segkit.runs.device import pick_device


def predict_validation(run_dir: Path, device: str = "auto", config: Optional[Config] = None
                       ) -> tuple[ClassRows, dict, list, dict]:
    """(predictions with probabilities, truth {id: class name}, class names, {id: manifest row}) of the
    run's validation rows; ``config``: the run's config with the infer settings to use (default: its own)."""
    config = config if config is not None else load_config(Path(run_dir) / "config.yaml")
    rows = validation_rows(config)
    torch_device = pick_device(device)
    ensemble = load_ensemble([Path(run_dir)], config.infer.epochs, torch_device)
    settings = ClassSettings(tta=config.infer.tta, batch_size=config.infer.batch_size, amp=config.train.amp)
    logits, weights = predict_logits(ensemble, rows, settings, torch_device)
    probs = ensemble_probs(logits, weights)
    names = [str(n) for n in config.data.class_names]
    pred = ClassRows({row.id: names[int(k)] for row, k in zip(rows, probs.argmax(axis=1))},
                     {row.id: p for row, p in zip(rows, probs)}, list(names))
    truth = {row.id: names[int(row.target)] for row in rows}
    return pred, truth, names, {row.id: row for row in rows}
