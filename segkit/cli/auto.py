"""`segkit plan` and `segkit auto`: settings read off the data and a time budget (segkit.workflows)."""

from __future__ import annotations

from pathlib import Path

import click

from segkit.cli.flags import setting_options
from segkit.cli.options import command_config, common_options, runs_folder, task_option
from segkit.ground.errors import SegkitError

BUDGET_HELP = "Time for training plus the empirical stage: 90s, 10m, 1.5h."


def _config(command: str, data: str, config_path, overrides):
    """DATA names a config (a .yaml file) or the data itself (data.manifest); --config applies underneath."""
    if data.endswith((".yaml", ".yml")):
        if config_path is not None:
            raise SegkitError(f"{data}: DATA is a config file; give it or --config, not both")
        return command_config(command, data, overrides)
    return command_config(command, config_path, overrides, values={"data.manifest": data})


@click.command()
@click.argument("data")
@common_options
@task_option
@click.option("--budget", default=None, help=BUDGET_HELP + " Without it no probe runs and epochs stay as given.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="plan.yaml", show_default=True,
              help="Plan file to write (an ordinary config with a why: note per planned key).")
@click.option("--fresh-probe", is_flag=True, help="Measure the throughput again instead of the cached figures.")
def plan(data, config_path, overrides, budget, out_path, fresh_probe):
    """Plan a recipe from DATA: fingerprint, rules, throughput probe. Trains nothing.

    DATA is a manifest CSV, a folder (images/ + masks/, or one sub-folder per class), 'sample',
    or a config file whose data section names the data.

    The fingerprint (image sizes, dtypes, ranges, object sizes, touching share, class balance) is
    read from the training fold by sampled windows; every planned key is printed with its rule
    and the figure behind it, and written to --out, which `segkit train --config` reads as it is.
    """
    from functools import partial

    from segkit.workflows.budget import parse_budget, probe_throughput
    from segkit.workflows.plan import make_plan, summary_line

    budget_s = parse_budget(budget) if budget is not None else None
    config = _config("plan", data, config_path, overrides)
    planned = make_plan(config, budget_s=budget_s, overrides=list(overrides),
                        probe=partial(probe_throughput, fresh=fresh_probe))
    click.echo(summary_line(planned))
    click.echo(planned.table())
    click.echo(f"wrote {planned.write(Path(out_path))}")


@click.command()
@click.argument("data", required=False)
@common_options
@task_option
@click.option("--budget", required=True, help=BUDGET_HELP + " With --resume: the time for what is left.")
@setting_options("run.name")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop (nothing trained or written).")
@click.option("--resume", "resume_run", default=None, metavar="RUN",
              help="Continue an auto run cut short (name or path): the rest of its training, its planned fine-tune, "
                   "then the empirical stage. DATA is not given.")
def auto(data, config_path, overrides, budget, dry_run, resume_run):
    """Plan from DATA, train within --budget, then choose infer settings on the validation fold.

    DATA is what `segkit plan` takes (a manifest, a folder, 'sample' or a config file).

    The empirical stage compares checkpoint sets (last 3, best, last), TTA views (a view is kept
    only if it helps) and the threshold and minimum object size (instance runs: the watershed's
    seed thresholds) on the validation fold only, and saves them as the run's infer defaults:
    `segkit infer -r RUN IMAGE --polygons out.geojson` needs no other flag. A validation fold with
    too few objects keeps the planned values and says so. Ctrl-C or SIGTERM keeps the checkpoints;
    `segkit auto --resume RUN --budget 5m` does what is left (training, fine-tune, empirical stage).
    """
    from segkit.workflows.auto import resume_auto, run_auto
    from segkit.workflows.budget import parse_budget

    budget_s = parse_budget(budget)
    if resume_run is not None:
        from segkit.runs.rundir import resolve_run

        if data is not None:
            raise SegkitError(f"{data}: give DATA or --resume RUN, not both")
        resume_auto(resolve_run(resume_run, runs_folder(config_path, overrides)), budget_s=budget_s, echo=click.echo)
        return
    if data is None:
        raise SegkitError("DATA: missing (a manifest, a folder, 'sample' or a config file), or --resume RUN")
    config = _config("auto", data, config_path, overrides)  # --name, --device, ... are read as their settings
    run_auto(config, budget_s=budget_s, overrides=list(overrides), dry_run=dry_run, echo=click.echo)
