"""`segkit oof` and `segkit clean`: out-of-fold class probabilities and the label issues they reveal."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.cli.options import command_config, common_options, task_option
from segkit.ground.errors import SegkitError


@click.command()
@common_options
@task_option
@click.option("--folds", type=int, required=True, help="Number of folds K: K runs, each validating on one fold.")
@click.option("--name", default="oof", show_default=True,
              help="Fold runs are RUNS_DIR/NAME-fold0 ... NAME-fold{K-1} (existing ones are reused or resumed).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="The CSV to write (default RUNS_DIR/NAME.csv): id,fold,class,label + one probability per class.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def oof(config_path, overrides, folds, name, out_path, overwrite):
    """Out-of-fold predictions: train K fold runs and predict every row with the one that did not train on it.

    Each fold is a normal run directory (`segkit infer`, `finetune` and `--resume` work on it);
    running the same command again after an interruption resumes the unfinished fold and reuses
    the finished ones. The CSV is the input of `segkit clean`.
    """
    from segkit.report.oof import run_oof

    config = command_config("oof", config_path, overrides)
    out = Path(out_path) if out_path else Path(config.run.runs_dir) / f"{name}.csv"
    run_oof(config, folds=folds, name=name, out=out, overwrite=overwrite, device=config.run.device, log=click.echo)


@click.command()
@common_options
@task_option
@click.option("--oof", "oof_path", type=click.Path(dir_okay=False), required=True,
              help="Out-of-fold probabilities written by `segkit oof`.")
@click.option("--manifest", default=None,
              help="The manifest whose labels are checked (default: data.manifest of --config/--set).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="The new manifest without the flagged rows (CSV; the input manifest is never modified).")
@click.option("--issues", "issues_path", type=click.Path(dir_okay=False), default=None,
              help="The ranked label issues (default: label_issues.csv beside --out).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def clean(config_path, overrides, oof_path, manifest, out_path, issues_path, overwrite):
    """Find likely label errors with confident learning and write a manifest without them.

    Per class, the threshold is the mean out-of-fold probability of that class over the rows
    labelled with it; a row is flagged when its own label's probability is below its class's
    threshold while another class reaches its own (Northcutt et al. 2021). Flagged rows are ranked
    most-likely-wrong first in label_issues.csv with the suggested class.
    """
    import numpy as np

    from segkit.data.classes import resolve_classes
    from segkit.data.clean import clean_rows
    from segkit.data.split import load_rows
    from segkit.io.class_table import read_class_table

    config = command_config("clean", config_path, overrides)
    table = read_class_table(oof_path, extra=("fold", "class"))
    if table.probs is None:
        raise SegkitError(f"{oof_path}: has no probability columns (write it with `segkit oof`)")
    if np.isnan(table.probs).any():
        raise SegkitError(f"{oof_path}: some rows have no out-of-fold probabilities")
    source = manifest or config.data.manifest
    rows, names = resolve_classes(load_rows(source), table.class_names, str(source), task="cls")
    out = Path(out_path)
    issues = clean_rows(rows, dict(zip(table.ids, table.probs)), names,
                        issues_path=Path(issues_path) if issues_path else out.parent / "label_issues.csv",
                        manifest_path=out, source=Path(source), overwrite=overwrite)
    flagged = int(issues.flagged.sum())
    click.echo(f"{flagged} of {len(rows)} rows flagged ({100.0 * flagged / len(rows):.1f}%); "
               f"kept {len(rows) - flagged} in {out}")
