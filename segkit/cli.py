"""The `segkit` command: thin flags -> Config -> one library call per command."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from segkit import __version__
from segkit.ground.config import TASKS, Config, load_config
from segkit.ground.errors import SegkitError

CONFIG_HELP = "YAML config; every key is listed with a comment in configs/default.yaml."
SET_HELP = "Override one config key, e.g. --set train.lr=3e-4 (repeatable; value parsed as YAML)."


class SegkitGroup(click.Group):
    """Expected mistakes (SegkitError) become one `Error: ...` line and exit code 1, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SegkitError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; outputs not written, checkpoints kept", err=True)
            sys.exit(130)


def config_options(function):
    """--config, --set and --task, shared by every command that builds a Config."""
    function = click.option("--task", type=click.Choice(TASKS), default=None,
                            help="seg: segmentation masks; cls: one class per image/tile. Default: config's task (seg).")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(function)
    function = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help=CONFIG_HELP)(function)
    return function


def build_config(config_path, overrides, task=None, **shortcuts) -> Config:
    """Config file <- --set <- dedicated flags (a flag given explicitly wins)."""
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    if task is not None:
        extra.append(f"task={task}")
    return load_config(config_path, list(overrides) + extra)


@click.group(cls=SegkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segkit")
def cli():
    """segkit: segment very large images the way competition winners do.

    \b
    Progressive training and stitched inference in three commands:
      segkit train --size 256      random windows, low-resolution stage
      segkit finetune --size 512   same field of view at full resolution, from the 256 run
      segkit infer --rle sub.csv   overlapping tiles, blended, TTA + checkpoint ensemble
    Each run lives in runs/NAME/ (config.yaml, metrics.jsonl, checkpoints/, plots/).
    """


@cli.command()
@config_options
@click.option("--size", type=int, default=None, help="Pixels the network sees (windows are resampled fov -> size).")
@click.option("--fov", "fov_px", type=int, default=None,
              help="Source pixels a window covers (default: --size, i.e. full resolution).")
@click.option("--epochs", type=int, default=None, help="Epochs of this stage.")
@click.option("--name", default=None, help="Run directory name under runs/ (default train-<timestamp>).")
@click.option("--fold", "val_fold", type=int, default=None, help="Validation fold K (others train).")
@click.option("--subset", type=float, default=None, help="Fraction of the windows per epoch to use (fast experiments).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--resume", "resume_run", default=None, metavar="RUN",
              help="Continue an interrupted run (name or path) from its last checkpoint; other options are ignored.")
@click.option("--log", "log", type=click.Choice(["none", "tensorboard"]), default=None,
              help="Also log epochs to TensorBoard in RUN/tensorboard (needs: pip install tensorboard).")
def train(config_path, overrides, task, size, fov_px, epochs, name, val_fold, subset, device, resume_run, log):
    """Train a model on random windows cut from large images.

    Windows are drawn at a fresh random position every time (biased toward labelled objects),
    read window by window and resampled from --fov source pixels to --size network pixels.
    Every epoch is validated on the held-out fold with the same tiled predictor `infer` uses,
    and checkpointed atomically in runs/NAME/checkpoints/.
    """
    from segkit.runs.rundir import resolve_run
    from segkit.train.fit import fit

    config = build_config(
        config_path, overrides, task, **{
            "data.size": size, "data.fov_px": fov_px, "train.epochs": epochs, "run.name": name,
            "data.val_fold": val_fold, "train.subset": subset, "run.device": device, "run.log": log,
        }
    )
    if resume_run is not None:
        fit(config, resume=resolve_run(resume_run, Path(config.run.runs_dir)))
    else:
        fit(config, command="train")


@cli.command()
@click.option("--from", "parent_run", default=None, metavar="RUN",
              help="Run to start from (name or path); default the newest train run in runs/.")
@click.option("--size", type=int, required=True, help="New network size; the field of view stays the parent's.")
@click.option("--epochs", type=int, default=None, help="Epochs of this stage (default: the parent's).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the parent's).")
@click.option("--name", default=None, help="Run directory name (default finetune-<timestamp>).")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--epoch", "parent_epoch", default="best", show_default=True, metavar="N|best|last",
              help="Parent checkpoint to start from: best (by validation Dice), last, or an epoch number.")
@click.option("--log", "log", type=click.Choice(["none", "tensorboard"]), default=None,
              help="Also log epochs to TensorBoard in RUN/tensorboard (needs: pip install tensorboard).")
def finetune(parent_run, size, epochs, lr, name, runs_dir, overrides, parent_epoch, log):
    """Continue a run at a new network size over the same field of view.

    The progressive schedule: `train --size 256` reads fov-pixel windows downscaled to 256;
    `finetune --size 512` reads the same windows at 512, starting from the parent's best
    checkpoint with its channel spec and normalization. The new run records its parent.
    """
    from segkit.runs.rundir import resolve_run
    from segkit.train.fit import fit

    parent = resolve_run(parent_run, Path(runs_dir), commands=("train", "finetune"))
    base = load_config(parent / "config.yaml")
    extra = [f"data.size={size}", "run.name=null"]
    extra += [f"{key}={value}" for key, value in (("train.epochs", epochs), ("train.lr", lr), ("run.name", name),
                                                  ("run.log", log)) if value is not None]
    config = load_config(None, list(overrides) + extra, base=base)
    if config.data.fov_px != base.data.fov_px:
        raise SegkitError(f"finetune keeps the parent's field of view ({base.data.fov_px} px); do not change data.fov_px")
    fit(config, command="finetune", parent=parent, parent_epoch=parent_epoch)


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--run", "-r", "runs", multiple=True, metavar="RUN",
              help="Run(s) to predict with (repeatable: several runs are averaged). Default: the newest run. "
                   "Under torchrun spell it -r: torchrun's own parser rejects --run as ambiguous.")
@click.option("--runs-dir", default="runs", show_default=True, help="Where runs live.")
@click.option("--epochs", default=None,
              help="Checkpoints averaged per run: last:K, best, all or a list like 8,9,10. Default: infer.epochs (last:3).")
@click.option("--soup", is_flag=True, help="Average the checkpoints' weights into one model instead of their predictions.")
@click.option("--tta", default=None,
              help="Test-time augmentation: none, hflip (original 0.6 + hflip 0.4), flips, d4, or view:weight,... "
                   "Default: infer.tta (hflip).")
@click.option("--rle", "rle_path", type=click.Path(dir_okay=False), default=None,
              help="Write a Kaggle CSV `id,rle`: 'start length' pairs, column-major (top to bottom, then left to "
                   "right), 1-indexed, as in HuBMAP. infer.rle_order=C switches to row-major.")
@click.option("--polygons", default=None, help="Write GeoJSON polygons (CRS coordinates when the image has one). "
                                                 "With several images, put {id} in the path.")
@click.option("--mask", default=None, help="Write a tiled, compressed class-id mask TIFF ({id} for several images).")
@click.option("--probs", default=None, help="Write probabilities as a tiled uint8 TIFF (0..255; {id} for several images).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing (needs the crf extra: pip install 'segkit[crf]').")
@click.option("--threshold", type=float, default=None, help="Probability threshold. Default: infer.threshold (0.5).")
@click.option("--overlap", "overlap_px", type=int, default=None, help="Tile overlap in source pixels. Default: infer.overlap_px.")
@click.option("--margin", "margin_px", type=int, default=None,
              help="Context margin in source pixels: each tile is predicted, only its centre is kept. "
                   "Default: infer.margin_px (0).")
@click.option("--skip-background", is_flag=True, default=None,
              help="Do not run tiles that are background on the thumbnail (output 0 there); method: infer.tissue.")
@click.option("--batch-size", type=int, default=None, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override infer.* keys of the run's config.")
def infer(images, runs, runs_dir, epochs, soup, tta, rle_path, polygons, mask, probs, crf, threshold, overlap_px,
          margin_px, skip_background, batch_size, device, overwrite, overrides):
    """Predict large images tile by tile and write RLE, polygons or TIFFs.

    Tiles overlap and are blended with gaussian weights in row strips, so memory stays at about
    one strip whatever the image size. Without IMAGES, the run's manifest images are predicted.
    Under `torchrun --nproc_per_node=N -m segkit.cli infer ...` the images are split across ranks.
    """
    from segkit.infer.run import (
        Outputs,
        Settings,
        image_list,
        infer_images,
        load_ensemble,
        tissue_method,
    )
    from segkit.runs import distributed
    from segkit.runs.device import pick_device
    from segkit.runs.rundir import resolve_run

    run_dirs = [resolve_run(spec, Path(runs_dir)) for spec in runs] or [resolve_run(None, Path(runs_dir))]
    base = load_config(run_dirs[0] / "config.yaml")
    shortcuts = {"infer.epochs": epochs, "infer.tta": tta, "infer.threshold": threshold,
                 "infer.overlap_px": overlap_px, "infer.batch_size": batch_size, "infer.margin_px": margin_px,
                 "infer.skip_background": True if skip_background else None}
    config = load_config(None, list(overrides) + [f"{k}={v}" for k, v in shortcuts.items() if v is not None], base=base)
    settings = Settings(
        overlap_px=config.infer.overlap_px, blend=config.infer.blend, tta=config.infer.tta,
        threshold=config.infer.threshold, batch_size=config.infer.batch_size, amp=config.train.amp,
        rle_order=config.infer.rle_order, min_object_px=config.infer.min_object_px,
        fill_holes=config.infer.fill_holes, crf=(config.infer.crf or {}) if crf else None, progress=config.run.progress,
        margin_px=config.infer.margin_px, tissue=tissue_method(config),
    )
    if not images:
        from segkit.data.split import load_rows

        images = sorted({str(row.image) for row in load_rows(config.data.manifest)})
    dist_info = distributed.setup(device)  # a no-op outside torchrun
    try:
        device_obj = dist_info.device if dist_info.world_size > 1 else pick_device(device)
        ensemble = load_ensemble(run_dirs, config.infer.epochs, device_obj, soup=soup)
        outputs = Outputs(Path(rle_path) if rle_path else None, polygons, mask, probs, overwrite)
        written = infer_images(ensemble, image_list([Path(p) for p in images]), outputs, settings, device_obj)
    finally:
        distributed.cleanup()
    if dist_info.rank == 0:
        checkpoints = ", ".join(p.name for p in ensemble.checkpoints)
        click.echo(f"predicted {len(images)} image(s) with {len(ensemble.models)} model(s) [{checkpoints}], "
                   f"tta {settings.tta}" + (f", {dist_info.world_size} ranks" if dist_info.world_size > 1 else ""))
        for path in written:
            click.echo(f"wrote {path}")


@cli.command()
@config_options
@click.option("--size", type=int, default=None, help="Network size of the windows sampled.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the statistics as JSON (atomically).")
def stats(config_path, overrides, task, size, out_path):
    """Per-channel mean/std of training windows after channel stacking.

    Samples data.stats_windows random training windows, stacks the channels of data.channels and
    prints mean and std per channel. `train` computes the same automatically at the start of a
    run and stores them in runs/NAME/preprocess.json, which `infer` reuses.
    """
    from segkit.data.inputs import compute_preprocess, open_training_data
    from segkit.data.stats import save_stats

    config = build_config(config_path, overrides, task, **{"data.size": size, "data.normalize": True})
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, mean=None, std=None))
    preprocess = compute_preprocess(config, open_training_data(config), config.run.seed)
    for index, (spec, mean, std) in enumerate(zip(preprocess.channels, preprocess.mean, preprocess.std)):
        click.echo(f"channel {index} (band {spec.band}): mean {mean:.6f}  std {std:.6f}")
    mean = ", ".join(f"{m:.6g}" for m in preprocess.mean)
    std = ", ".join(f"{s:.6g}" for s in preprocess.std)
    click.echo(f"to reuse: --set 'data.mean=[{mean}]' --set 'data.std=[{std}]'")
    if out_path:
        save_stats(out_path, preprocess.mean, preprocess.std)
        click.echo(f"wrote {out_path}")


@cli.command()
@config_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--count", type=int, default=16, show_default=True, help="Windows in the grid.")
@click.option("--columns", type=int, default=4, show_default=True, help="Windows per row of the grid.")
@click.option("--size", type=int, default=None, help="Network size of the windows (default: data.size).")
def preview(config_path, overrides, task, out_path, count, columns, size):
    """Write a PNG grid of training windows as the network sees them.

    Windows are drawn by the training sampler, stacked into channels (data.channels) and
    augmented (data.augment, data.copy_paste), with mask outlines drawn in a colour per class.
    One channel shows grey, three show RGB, more show the first three.
    """
    from segkit.data.inputs import preview_samples
    from segkit.report.preview import write_preview

    if count < 1:
        raise SegkitError(f"--count must be >= 1, got {count}")
    config = build_config(config_path, overrides, task, **{"data.size": size})
    path = write_preview(preview_samples(config, count, config.run.seed), out_path, columns=columns)
    click.echo(f"wrote {path}")


def main(argv=None):
    cli.main(args=argv, prog_name="segkit")


if __name__ == "__main__":
    main()
