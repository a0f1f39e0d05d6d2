"""`segkit train` and `segkit finetune`: one training stage each (segkit.train.fit)."""

from __future__ import annotations

import dataclasses

import click

from segkit.cli.options import (
    ALL_SECTIONS, command_config, common_options, run_option, runs_folder, task_option, tracking_options,
)
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError


@click.command()
@common_options
@task_option
@click.option("--size", type=int, default=None, help="Pixels the network sees (windows are resampled fov -> size).")
@click.option("--fov", "fov_px", type=int, default=None,
              help="Source pixels a window covers (default: --size, i.e. full resolution).")
@click.option("--epochs", type=int, default=None, help="Epochs of this stage.")
@click.option("--name", default=None, help="Run directory name under the runs folder (default train-<timestamp>).")
@click.option("--fold", "val_fold", type=int, default=None, help="Validation fold K (others train).")
@click.option("--subset", type=float, default=None, help="Fraction of the windows per epoch to use (fast experiments).")
@click.option("--resume", "resume_run", default=None, metavar="RUN",
              help="Continue an interrupted run (name or path) from its last checkpoint; other options are ignored.")
@tracking_options
def train(config_path, overrides, runs_dir, device, task, size, fov_px, epochs, name, val_fold, subset, resume_run,
          log, tracking_uri):
    """Train a model on random windows cut from large images.

    Windows are drawn at a fresh random position every time (biased toward labelled objects),
    read window by window and resampled from --fov source pixels to --size network pixels.
    Every epoch is validated on the held-out fold with the same tiled predictor `infer` uses,
    and checkpointed atomically in RUNS/NAME/checkpoints/. Images with integers wider than
    8 bits (uint16, int16) are windowed to their 1-99th percentile by default (data.channels).
    Off a terminal, progress is printed as plain lines (rate, ETA) every few seconds.
    A run is trained by one process at a time (RUNS/NAME/.lock; --resume of a run in use is
    refused). A killed run leaves .NAME.PID.XXXX.tmp files (a checkpoint being written); the
    next train, finetune or --resume in that runs folder removes them.
    """
    from segkit.runs.rundir import resolve_run
    from segkit.train.fit import fit

    config = command_config(
        "train", ALL_SECTIONS, config_path, overrides, runs_dir=runs_dir, device=device, task=task, **{
            "data.size": size, "data.fov_px": fov_px, "train.epochs": epochs, "run.name": name,
            "data.val_fold": val_fold, "train.subset": subset, "run.log": log, "run.tracking_uri": tracking_uri,
        }
    )
    if resume_run is not None:
        fit(config, resume=resolve_run(resume_run, runs_folder(config_path, overrides, runs_dir)))
    else:
        fit(config, command="train")


@click.command()
@common_options
@task_option
@run_option(aliases=("--from",), help="Run to start from (a run directory or a name under the runs folder); "
                                      "--from is the same. Default: the newest train or finetune run.")
@click.option("--size", type=int, required=True, help="New network size; the field of view stays the parent's.")
@click.option("--epochs", type=int, default=None, help="Epochs of this stage (default: the parent's).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the parent's).")
@click.option("--name", default=None, help="Run directory name (default finetune-<timestamp>).")
@click.option("--epoch", "parent_epoch", default="best", show_default=True, metavar="N|best|last",
              help="Parent checkpoint to start from: best (by validation Dice), last, or an epoch number.")
@tracking_options
def finetune(config_path, overrides, runs_dir, device, task, run, size, epochs, lr, name, parent_epoch, log,
             tracking_uri):
    """Continue a run at a new network size over the same field of view.

    The progressive schedule: `train --size 256` reads fov-pixel windows downscaled to 256;
    `finetune --size 512` reads the same windows at 512, starting from the parent's best
    checkpoint with its channel spec and normalization. The new run records its parent.
    --config and --set apply on top of the parent's config.
    """
    from segkit.runs.rundir import resolve_run
    from segkit.train.fit import fit

    parent = resolve_run(run, runs_folder(config_path, overrides, runs_dir), commands=("train", "finetune"))
    base = load_config(parent / "config.yaml")
    named = dataclasses.replace(base, run=dataclasses.replace(base.run, name=None))  # the parent's name is its own
    config = command_config(
        "finetune", ALL_SECTIONS, config_path, overrides, runs_dir=runs_dir, device=device,
        task=task, base=named, **{"data.size": size, "train.epochs": epochs, "train.lr": lr, "run.name": name,
                                 "run.log": log,
                                 "run.tracking_uri": tracking_uri},
    )
    if config.data.fov_px != base.data.fov_px:
        raise SegkitError(f"finetune keeps the parent's field of view ({base.data.fov_px} px); do not change data.fov_px")
    fit(config, command="finetune", parent=parent, parent_epoch=parent_epoch)
