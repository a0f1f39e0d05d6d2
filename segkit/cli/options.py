"""What every segkit command shares: one-line errors, --config/--set/--task, Config building."""

from __future__ import annotations

import sys

import click

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


def tracking_options(function):
    """--log and --tracking-uri, shared by the training commands."""
    function = click.option("--tracking-uri", "tracking_uri", default=None, metavar="URI",
                            help="MLflow tracking URI (default: sqlite:///RUNS/mlflow.db).")(function)
    function = click.option("--log", "log", type=click.Choice(["none", "tensorboard", "mlflow"]), default=None,
                            help="Also log epochs to TensorBoard (RUN/tensorboard; pip install tensorboard) or "
                                 "MLflow (params, metrics, artifacts; pip install 'segkit[mlflow]').")(function)
    return function


def build_config(config_path, overrides, task=None, **shortcuts) -> Config:
    """Config file <- --set <- dedicated flags (a flag given explicitly wins)."""
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    if task is not None:
        extra.append(f"task={task}")
    return load_config(config_path, list(overrides) + extra)
