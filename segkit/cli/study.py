"""`segkit evaluate`, `segkit runs`, `segkit tune`: the study loop (segkit.workflows, segkit.report, segkit.tune)."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.cli.flags import given_flags
from segkit.cli.options import command_config, common_options, run_option, runs_folder, task_option


@click.command()
@common_options
@task_option
@run_option(help="Score a run: its validation fold is predicted with the run's own infer settings.")
@click.option("--pred", default=None, metavar="PATH",
              help="Score prediction files: an RLE CSV (a Kaggle submission), a folder of masks or GeoJSON files "
                   "named by image id, or one mask/GeoJSON file. With --task cls: a CSV id,label[,probabilities].")
@click.option("--truth", default=None, metavar="PATH",
              help="Truth in any label form segkit reads (RLE CSV, mask folder, GeoJSON). Default: the manifest's labels.")
@click.option("--images", multiple=True, metavar="PATH",
              help="Image files or folders (ids are file stems). Default: the run's validation fold, or the manifest.")
@click.option("--vs", default=None, metavar="RUN|PATH",
              help="Compare with another run or prediction: better/worse per image, the largest changes side by side.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="report.html to write (a .json of the scores goes next to it). Default: RUN/report.html or ./report.html.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--worst", default=12, show_default=True, help="Worst images/tiles shown as overlays.")
@click.option("--tile", "tile_px", default=2048, show_default=True,
              help="Images larger than this are scored and shown tile by tile (source pixels).")
@click.option("--no-objects", is_flag=True, help="Skip object-level F1 (connected components matched at IoU >= 0.5).")
@click.option("--search", is_flag=True,
              help="With --run: search threshold, minimum object size and the original TTA view's weight on the "
                   "validation predictions, print the gain and save the best as the run's infer defaults. "
                   "Instance runs: the watershed's seed_threshold, seed_border and threshold, for object F1.")
def evaluate(config_path, overrides, run, pred, truth, images, vs, out, overwrite, worst,
             tile_px, no_objects, search):
    """Score predictions against labels: per image and class, report.html, --vs, --search.

    \b
    Dice, IoU, precision, recall per image (or tile) and class, object F1; empty truth and empty
    prediction score 1 (the Kaggle convention of per-image Dice contests). report.html is one
    file: the score table, histograms, the worst images as true positive (green), false
    positive (red) and false negative (blue) overlays, and with --vs what changed.
      segkit evaluate --run stage2 --vs stage1
      segkit evaluate --pred submission.csv --truth train.csv --images slides/
    """
    # why: a click command receives one parameter per option it declares.
    from segkit.ground.config import load_config
    from segkit.workflows.evaluate_run import EvaluateRequest, run_settings
    from segkit.workflows.evaluate_run import evaluate as run_evaluate
    from segkit.runs.rundir import resolve_run

    flags = given_flags()
    folder = runs_folder(config_path, overrides)
    if run is not None:  # the run's own config, with the infer settings --config/--set give
        run_dir = resolve_run(run, folder)
        own = load_config(run_dir / "config.yaml")
        merged = command_config("evaluate --run", config_path, overrides, base=own, values={"task": own.task})
        config = run_settings(own, merged, flags.get("task"), run_dir)
        run = str(run_dir)
    else:
        config = command_config("evaluate", config_path, overrides)
    request = EvaluateRequest(config=config, run=run, pred=pred, truth=truth, images=images, vs=vs, out=out,
                              overwrite=overwrite, worst=worst, tile_px=tile_px, objects=not no_objects, search=search,
                              device=config.run.device, runs_dir=folder, overrides=tuple(overrides))
    run_evaluate(request, echo=click.echo)


@click.command()
@common_options
@click.argument("names", nargs=-1)
@click.option("--sort", "sort_by", default=None,
              help="Sort by a column: name, parent, task, size, fov, changed, best, epoch, time, status.")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write the validation curves of the runs listed (NAMES, default all) in one PNG.")
@click.option("--width", default=60, show_default=True, help="Characters shown of the 'changed' column.")
def runs(config_path, overrides, names, sort_by, desc, plot_path, width):
    """One table of every run: parent, size, fov, changed settings, best score, time, status.

    'changed' lists the settings that differ from the parent run (for a finetune) or else from
    the defaults. NAMES restricts the table and the plot to those runs.
    """
    from segkit.report.runs_table import collect_runs, format_table, plot_curves, select_rows, sort_rows

    command_config("runs", config_path, overrides)  # checks --set keys
    runs_dir = runs_folder(config_path, overrides)
    rows = collect_runs(Path(runs_dir))
    if names:
        rows = select_rows(rows, list(names))
    if sort_by:
        rows = sort_rows(rows, sort_by, descending=desc)
    click.echo(format_table(rows, width=width) if rows else f"no runs in {runs_dir}")
    if plot_path:
        click.echo(f"wrote {plot_curves(rows, Path(plot_path))}")


@click.command()
@common_options
@task_option
@click.option("--space", "space_path", required=True, type=click.Path(dir_okay=False),
              help="YAML search space: config keys -> {low, high[, log, step]} or a list of choices.")
@click.option("--trials", type=int, required=True, help="Finished trials the study should have (resumes count).")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage: a database URL, or a file path for Optuna's journal file (shared disks). "
                   "Default: sqlite:///RUNS/optuna.db.")
@click.option("--study", "study_name", default="tune", show_default=True,
              help="Study name; trial runs are named STUDY-tNNN.")
@click.option("--no-prune", is_flag=True, help="Run every trial to its last epoch (no median pruner).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the best config YAML here.")
def tune(config_path, overrides, space_path, trials, storage, study_name, no_prune, out):
    """Search hyperparameters with Optuna (TPE sampler, median pruner on the per-epoch validation score).

    Each trial is a normal training run (runs/STUDY-tNNN). The study is stored in SQLite in the
    runs folder by default, so an interrupted search resumes when the same command is run again;
    --storage lets several machines share one study (optuna-dashboard opens the same storage).
    Prints the best config as YAML ready for --config.
    """
    from segkit.io.atomic import write_text
    from segkit.tune.space import load_space

    config = command_config("tune", config_path, overrides, values={"run.progress": False})
    space = load_space(space_path, base=config)  # a bad space fails before torch and optuna are imported
    from segkit.tune.optuna import tune as run_tune
    from segkit.train.fit import fit

    result = run_tune(config, space, trials=trials, fit=fit, storage=storage, study_name=study_name,
                      seed=config.run.seed, prune=not no_prune, log=click.echo)
    if result.best_run is None:
        raise click.ClickException(f"study {study_name!r}: no trial finished; nothing to report")
    click.echo(f"best: {result.best_value:.4f} ({result.best_run}); its config, ready for --config:")
    click.echo(result.best_yaml.rstrip())
    if out:
        click.echo(f"wrote {write_text(out, result.best_yaml)}")
