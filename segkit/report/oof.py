"""`segkit oof --folds K`: out-of-fold class probabilities of every manifest row.

The study command's entry (a composition root): it unpacks the Config. Fold k is a normal run
directory, ``<runs_dir>/<name>-fold<k>``, trained by the one training engine with fold k
validating; a fold run that exists is reused when finished and resumed when it was interrupted,
so an interrupted `oof` picks up where it stopped. Each row is then predicted by the one fold
model that did not train on it (the run whose validation fold holds it), with the run's infer
settings (checkpoints, TTA), and oof.csv gets one row per manifest row:

    id,fold,class,label,<class 0>,<class 1>,...

(``class`` the given label, ``label`` the predicted one, then the probabilities), the input of
`segkit clean` (confident learning) and of stacking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from segkit.data.classes import resolve_classes
from segkit.data.split import FoldSpec, load_rows, make_folds
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.infer.calibrate import ensemble_probs
from segkit.infer.classes import ClassSettings, predict_logits, validation_rows
from segkit.infer.run import load_ensemble
from segkit.io.atomic import check_output
from segkit.io.class_table import write_class_table
from segkit.runs.device import pick_device
from segkit.runs.rundir import read_run_info
from segkit.train.fit import fit

FOLD_KEYS = ("manifest", "folds", "fold_method", "class_names")  # what must agree between oof and a fold run


def fold_config(config: Config, name: str, folds: int, fold: int) -> Config:
    """The config of fold ``fold``'s run: data.folds = ``folds``, data.val_fold = ``fold``, run name <name>-fold<k>."""
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, folds=int(folds), val_fold=int(fold)),
        run=dataclasses.replace(config.run, name=f"{name}-fold{fold}"))


def _train_fold(config: Config, run_dir: Path) -> None:
    """Train fold's run, reuse it when finished, resume it when interrupted."""
    if not run_dir.exists():
        fit(config, command="train")
        return
    theirs = load_config(run_dir / "config.yaml")
    for key in FOLD_KEYS:
        ours, saved = getattr(config.data, key), getattr(theirs.data, key)
        if key == "class_names" and ours is None:
            continue  # resolved from the manifest when the run was made
        if ours != saved:
            raise SegkitError(f"{run_dir}: exists with data.{key}={saved!r}, this oof asks for {ours!r} "
                              "(choose another --name)")
    if (theirs.run.seed, theirs.data.val_fold) != (config.run.seed, config.data.val_fold):
        raise SegkitError(f"{run_dir}: exists with another seed or validation fold (choose another --name)")
    if read_run_info(run_dir).get("status") != "finished":
        fit(theirs, resume=run_dir)


def run_oof(config: Config, *, folds: int, name: str, out: Path, overwrite: bool = False,
            device: str = "auto", log=print) -> Path:
    """Train (or reuse, or resume) the K fold runs and write ``out`` (see the module doc)."""
    if config.task != "cls":
        raise SegkitError(f"oof: out-of-fold class probabilities need --task cls (the config's task is {config.task})")
    if int(folds) < 2:
        raise SegkitError(f"--folds: need at least 2, got {folds}")
    out = check_output(out, overwrite)
    runs_dir = Path(config.run.runs_dir)
    d = config.data
    rows, names = resolve_classes(load_rows(d.manifest), d.class_names, str(d.manifest), task="cls")
    fold_of = np.array(make_folds(rows, FoldSpec(int(folds), d.fold_method, 0, config.run.seed), task="cls",
                                  options=None))
    probs = np.full((len(rows), len(names)), np.nan)
    torch_device = pick_device(device)
    for fold in range(int(folds)):
        fold_cfg = fold_config(config, name, folds, fold)
        run_dir = runs_dir / fold_cfg.run.name
        log(f"oof fold {fold}/{folds}: {run_dir}")
        _train_fold(fold_cfg, run_dir)
        run_cfg = load_config(run_dir / "config.yaml")
        members = np.flatnonzero(fold_of == fold)
        held_out = {row.id for row in validation_rows(run_cfg)}
        if held_out != {rows[i].id for i in members}:  # the run must not have trained on what it predicts
            raise SegkitError(f"{run_dir}: its validation rows differ from fold {fold} of this oof")
        ensemble = load_ensemble([run_dir], run_cfg.infer.epochs, torch_device)
        settings = ClassSettings(tta=run_cfg.infer.tta, batch_size=run_cfg.infer.batch_size, amp=run_cfg.train.amp)
        logits, weights = predict_logits(ensemble, [rows[i] for i in members], settings, torch_device)
        probs[members] = ensemble_probs(logits, weights)
    given = [names[int(row.target)] for row in rows]
    written = write_class_table(out, [row.id for row in rows], probs, names,
                                extra={"fold": fold_of.tolist(), "class": given}, overwrite=overwrite)
    accuracy = float(np.mean(probs.argmax(axis=1) == np.array([int(r.target) for r in rows])))
    log(f"oof: {len(rows)} rows, out-of-fold accuracy {accuracy:.4f}; wrote {written}")
    return written
