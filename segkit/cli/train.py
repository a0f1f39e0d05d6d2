"""`segkit train` and `segkit finetune`: one training stage each (segkit.train.fit)."""

from __future__ import annotations

import dataclasses

import click

from segkit.cli.flags import setting_option, setting_options
from segkit.cli.options import command_config, common_options, run_option, runs_folder, task_option, tracking_options
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError


@click.command()
@common_options
@task_option
@setting_options("data.size", "data.fov_px", "train.epochs", "run.name", "data.val_fold", "train.subset")
@click.option("--resume", "resume_run", default=None, metavar="RUN",
              help="Continue an interrupted run (name or path) from its last checkpoint; other options are ignored.")
@tracking_options
def train(config_path, overrides, resume_run):
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

    config = command_config("train", config_path, overrides)
    if resume_run is not None:
        fit(config, resume=resolve_run(resume_run, runs_folder(config_path, overrides)))
    else:
        fit(config, command="train")


@click.command()
@common_options
@task_option
@run_option(aliases=("--from",), help="Run to start from (a run directory or a name under the runs folder); "
                                      "--from is the same. Default: the newest train or finetune run.")
@setting_option("data.size", required=True, help="New network size; the field of view stays the parent's.")
@setting_options("train.epochs", "train.lr", default_from="the parent's ")
@setting_option("run.name")
@click.option("--epoch", "parent_epoch", default="best", show_default=True, metavar="N|best|last",
              help="Parent checkpoint to start from: best (by validation Dice), last, or an epoch number.")
@tracking_options
def finetune(config_path, overrides, run, parent_epoch):
    """Continue a run at a new network size over the same field of view.

    The progressive schedule: `train --size 256` reads fov-pixel windows downscaled to 256;
    `finetune --size 512` reads the same windows at 512, starting from the parent's best
    checkpoint with its channel spec and normalization. The new run records its parent.
    --config and --set apply on top of the parent's config.
    """
    from segkit.runs.rundir import resolve_run
    from segkit.train.fit import fit

    parent = resolve_run(run, runs_folder(config_path, overrides), commands=("train", "finetune"))
    base = load_config(parent / "config.yaml")
    named = dataclasses.replace(base, run=dataclasses.replace(base.run, name=None))  # the parent's name is its own
    config = command_config("finetune", config_path, overrides, base=named)
    if config.data.fov_px != base.data.fov_px:
        raise SegkitError(f"finetune keeps the parent's field of view ({base.data.fov_px} px); do not change data.fov_px")
    fit(config, command="finetune", parent=parent, parent_epoch=parent_epoch)
