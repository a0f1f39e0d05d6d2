"""`segkit suggest` and `segkit pseudo`: label less, with the run's own uncertainty."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.cli.flags import setting_options
from segkit.cli.options import command_config, common_options, run_option, runs_folder

RUNS = "the run's "


def _start(command: str, config_path, overrides, run):
    """(run directory, config: the run's <- --config <- --set <- flags, device, ensemble)."""
    from segkit.ground.config import load_config
    from segkit.infer.run import load_ensemble
    from segkit.runs.device import pick_device
    from segkit.runs.rundir import resolve_run

    run_dir = resolve_run(run, runs_folder(config_path, overrides))
    config = command_config(command, config_path, overrides, base=load_config(run_dir / "config.yaml"))
    if config.task == "cls":
        from segkit.ground.errors import SegkitError

        raise SegkitError(f"{run_dir}: a cls run; {command} needs a run that predicts masks")
    device = pick_device(config.run.device)
    return run_dir, config, device, lambda: load_ensemble([run_dir], config.infer.epochs, device)


def _images_run_out(out_help: str):
    """IMAGES, the shared grammar, --run and --out DIR of both commands."""
    def decorate(function):
        function = click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
                                help=out_help)(function)
        function = run_option(function)
        function = common_options(function)
        return click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))(function)

    return decorate


@click.command()
@_images_run_out("Folder for ID.geojson (QuPath/QGIS), rows.csv (manifest rows) and montage.png.")
@setting_options("label.regions", "label.region_px", "label.score", "label.diverse", "label.label_path",
                 default_from=RUNS)
@setting_options("infer.epochs", "infer.tta", "infer.geojson_crs", "infer.batch_size", default_from=RUNS)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def suggest(images, config_path, overrides, run, out_dir, overwrite):
    """Pick the regions of IMAGES worth annotating next: where the run is least sure.

    One pass of the run's checkpoints x TTA views scores every region of --region-size px over the
    usable area (data.tissue) by the entropy of the mean prediction and/or the disagreement of the
    views and checkpoints; picks never overlap each other or a region the run's manifest already
    labels. Writes OUT/ID.geojson (QuPath annotations classified Review, score as a measurement;
    raster CRS for GeoTIFFs), OUT/rows.csv (manifest rows with the picks' regions and the label file
    the annotator exports, label.label_path) and OUT/montage.png, all or none.
    """
    from segkit.data.split import load_rows
    from segkit.infer.run import image_list, infer_settings
    from segkit.io.atomic import remove_stale_temps, staged_commits
    from segkit.workflows.suggest import SuggestOptions, check_history
    from segkit.workflows.suggest import suggest as run_suggest

    run_dir, config, device, ensemble = _start("suggest", config_path, overrides, run)
    check_history(run_dir)
    labelled = load_rows(config.data.manifest)
    remove_stale_temps(out_dir)
    settings = infer_settings(config)
    with staged_commits():
        picks, written = run_suggest(ensemble(), image_list([Path(p) for p in images]), labelled, Path(out_dir),
                                     SuggestOptions.from_config(config), settings, device, overwrite)
    for rank, pick in enumerate(picks, 1):
        w = pick.window
        click.echo(f"{rank:3d}  {pick.image_id}  region {w.row},{w.col},{w.height},{w.width}  score {pick.score:.4f}"
                   f"  (entropy {pick.entropy:.4f}, disagreement {pick.disagreement:.4f})")
    for path in written:
        click.echo(f"wrote {path}")


@click.command()
@_images_run_out("Folder for ID.pseudo.tif, ID.pseudo.json and rows.csv (manifest rows with label.weight).")
@setting_options("label.low", "label.high", "label.weight", default_from=RUNS)
@setting_options("infer.epochs", "infer.tta", "infer.batch_size", default_from=RUNS)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def pseudo(images, config_path, overrides, run, out_dir, overwrite):
    """Write pseudo-labels of IMAGES: the run's confident pixels kept, the unsure ones ignored (255).

    Binary runs: probability >= --high is foreground, <= --low background; multiclass runs keep the
    argmax where its probability >= --high. The thresholds go into each TIFF's tags and a sidecar
    JSON; OUT/rows.csv holds manifest rows (weight label.weight) to append to the training manifest.
    """
    from segkit.infer.run import image_list, infer_settings
    from segkit.io.atomic import remove_stale_temps, staged_commits
    from segkit.workflows.pseudo import PseudoOptions
    from segkit.workflows.pseudo import pseudo as run_pseudo

    _, config, device, ensemble = _start("pseudo", config_path, overrides, run)
    options = PseudoOptions(config.label.low, config.label.high, config.label.weight)
    remove_stale_temps(out_dir)
    with staged_commits():
        written = run_pseudo(ensemble(), image_list([Path(p) for p in images]), Path(out_dir), options,
                             infer_settings(config), device, overwrite)
    click.echo(f"pseudo-labels: kept p <= {options.low} as background and p >= {options.high} as foreground, "
               "the rest ignored (255)")
    for path in written:
        click.echo(f"wrote {path}")
