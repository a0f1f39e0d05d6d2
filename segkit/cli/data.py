"""`segkit stats` and `segkit preview`: look at the training inputs before training."""

from __future__ import annotations

import dataclasses

import click

from segkit.cli.flags import setting_options
from segkit.cli.options import command_config, common_options, task_option
from segkit.ground.errors import SegkitError


@click.command()
@common_options
@task_option
@setting_options("data.size", "data.val_fold")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the statistics as JSON (atomically).")
def stats(config_path, overrides, out_path):
    """Per-channel mean/std of training windows after channel stacking.

    Samples data.stats_windows random training windows, stacks the channels of data.channels
    (integer images wider than 8 bits: their 1-99th percentile window by default) and prints
    mean and std per channel. `train` computes the same automatically at the start of a run and
    stores them in RUN/preprocess.json, which `infer` reuses.
    """
    from segkit.data.stats import save_stats
    from segkit.train.from_config import preprocess_for, training_data

    config = command_config("stats", config_path, overrides, values={"data.normalize": True})
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, mean=None, std=None))
    preprocess = preprocess_for(config, training_data(config))
    for index, (spec, mean, std) in enumerate(zip(preprocess.channels, preprocess.mean, preprocess.std)):
        window = f", window {spec.low:g}..{spec.high:g}" + (f" (percentiles {spec.percentiles[0]:g}-"
                                                             f"{spec.percentiles[1]:g})" if spec.percentiles else "")
        click.echo(f"channel {index} (band {spec.band}{window}): mean {mean:.6f}  std {std:.6f}")
    mean = ", ".join(f"{m:.6g}" for m in preprocess.mean)
    std = ", ".join(f"{s:.6g}" for s in preprocess.std)
    click.echo(f"to reuse: --set 'data.mean=[{mean}]' --set 'data.std=[{std}]'")
    if out_path:
        save_stats(out_path, preprocess.mean, preprocess.std)
        click.echo(f"wrote {out_path}")


@click.command()
@common_options
@task_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--count", type=int, default=16, show_default=True, help="Windows in the grid.")
@click.option("--columns", type=int, default=4, show_default=True, help="Windows per row of the grid.")
@setting_options("data.size", "data.val_fold")
def preview(config_path, overrides, out_path, count, columns):
    """Write a PNG grid of training windows as the network sees them.

    Windows are drawn by the training sampler, stacked into channels (data.channels) and
    augmented (data.augment, data.copy_paste), with mask outlines drawn in a colour per class.
    One channel shows grey, three show RGB, more show the first three.
    """
    from segkit.report.preview import write_preview
    from segkit.train.from_config import preview_samples

    if count < 1:
        raise SegkitError(f"--count must be >= 1, got {count}")
    config = command_config("preview", config_path, overrides)
    path = write_preview(preview_samples(config, count), out_path, columns=columns)
    click.echo(f"wrote {path}")
