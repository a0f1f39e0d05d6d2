"""`segkit config`: print the defaults with their comments, or a resolved config."""

from __future__ import annotations

import click

from segkit.cli.options import ALL_SECTIONS, command_config, common_options, run_option, runs_folder


@click.command("config")
@common_options
@run_option(help="Print this run's resolved config (a run directory or a name under the runs folder).")
def config_command(config_path, overrides, runs_dir, device, run):
    """Print the configuration as YAML.

    \b
    segkit config                          every key with its default and a comment
    segkit config --run RUN                the resolved config a run trained with
    segkit config --config sample --set train.lr=1e-3
                                           what a file/recipe and overrides resolve to
    """
    import yaml

    from segkit.ground.config import RECIPES_DIR, load_config, to_dict
    from segkit.runs.rundir import resolve_run

    given = run is not None or config_path is not None or overrides or runs_dir is not None or device is not None
    if not given:
        click.echo((RECIPES_DIR / "default.yaml").read_text(), nl=False)
        return
    base = None
    if run is not None:
        base = load_config(resolve_run(run, runs_folder(config_path, overrides, runs_dir)) / "config.yaml")
    config = command_config("config", ALL_SECTIONS, config_path, overrides, runs_dir=runs_dir, device=device, base=base)
    click.echo(yaml.safe_dump(to_dict(config), sort_keys=False), nl=False)
