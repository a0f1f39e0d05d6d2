"""`segkit config`: print the defaults with their help, one key explained, or a resolved config."""

from __future__ import annotations

import click

from segkit.cli.options import READS, command_config, common_options, run_option, runs_folder


@click.command("config")
@common_options
@run_option(help="Print this run's resolved config (a run directory or a name under the runs folder).")
@click.option("--explain", "explain_key", default=None, metavar="KEY",
              help="Explain one key: its help, type, default, allowed values, flag and the commands that read it.")
def config_command(config_path, overrides, run, explain_key):
    """Print the configuration as YAML.

    \b
    segkit config                          every key with its default and a comment
    segkit config --explain infer.tta      one key: help, default, choices, flag, readers
    segkit config --run RUN                the resolved config a run trained with
    segkit config --config sample --set train.lr=1e-3
                                           what a file/recipe and overrides resolve to
    """
    import yaml

    from segkit.cli.flags import given_flags
    from segkit.ground.config import load_config, to_dict
    from segkit.ground.reference import defaults_yaml
    from segkit.runs.rundir import resolve_run

    if explain_key is not None:
        click.echo(explain_text(explain_key))
        return
    if run is None and config_path is None and not overrides and not given_flags():
        click.echo(defaults_yaml(), nl=False)
        return
    base = None
    if run is not None:
        base = load_config(resolve_run(run, runs_folder(config_path, overrides)) / "config.yaml")
    config = command_config("config", config_path, overrides, base=base)
    click.echo(yaml.safe_dump(to_dict(config), sort_keys=False), nl=False)


def explain_text(key: str) -> str:
    """`segkit config --explain KEY`: the field's own text plus who reads it and which flags set it."""
    from segkit.cli.options import reads_key
    from segkit.ground.errors import SegkitError
    from segkit.ground.reference import explain
    from segkit.ground.settings import find_setting

    try:
        item = find_setting(key)
    except KeyError as exc:
        raise SegkitError(f"--explain {exc.args[0]}") from None
    readers = [name for name, reads in READS.items() if reads_key(key, reads)]
    return explain(item, readers=readers, flags=flag_users(key))


def flag_users(key: str) -> list[str]:
    """`segkit CMD --flag` for every command whose flag sets ``key``."""
    from segkit.cli import cli

    users = []
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if getattr(param, "segkit_key", None) == key:
                users.append(f"segkit {name} {param.opts[0]}")
    return users
