"""The grammar every segkit command shares, as option decorators other command modules apply.

- ``common_options``: ``--config FILE|RECIPE``, ``--set KEY=VALUE`` (repeatable),
  ``--runs-dir DIR`` and ``--device auto|cpu|cuda|cuda:N`` on every command;
- ``task_option``: ``--task seg|cls`` where a command builds a model or its data;
- ``run_option``: ``--run/-r RUN`` wherever a command starts from a run (``--from`` is finetune's
  alias; ``train --resume RUN`` stays), resolved the same way everywhere (:func:`find_runs`);
- :func:`command_config`: defaults (or a run's config) <- ``--config`` <- ``--set`` <- dedicated
  flags, refusing ``--set`` keys the command does not read (``infer --set train.lr=1`` is an
  error that names what infer reads, instead of silently doing nothing).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from segkit.ground.config import TASKS, Config, load_config, parse_override, read_config_file, recipe_names
from segkit.ground.errors import SegkitError, reset_warnings
from segkit.io.atomic import disk_error_line

ALL_SECTIONS = ("task", "run", "data", "model", "train", "infer")
SET_HELP = "Override one config key, e.g. --set train.lr=3e-4 (repeatable; value parsed as YAML)."
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N. Default: run.device."
RUNS_DIR_HELP = "Folder of the run directories. Default: run.runs_dir (runs)."


def _config_help() -> str:
    return (f"YAML config file, or a recipe shipped with segkit by name ({', '.join(recipe_names())}). "
            "`segkit config` prints every key with its default and a comment.")


class SegkitGroup(click.Group):
    """Expected mistakes (SegkitError) become one `Error: ...` line and exit code 1, no traceback."""

    def invoke(self, ctx):
        from segkit.runs.signals import exit_code, interrupt_on_sigterm, signal_name

        reset_warnings()
        try:
            with interrupt_on_sigterm(), warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except SegkitError as exc:
            raise click.ClickException(_one_line(str(exc))) from None
        except Exception as exc:  # a full disk deep inside a library (SQLite): one line too
            line = disk_error_line(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (segkit.runs.signals)
            click.echo(f"interrupted ({signal_name(exc)}); outputs not written, checkpoints kept", err=True)
            sys.exit(exit_code(exc))


def _one_line(message: str) -> str:
    """A SegkitError re-raised by a DataLoader worker carries the worker's traceback in its text
    ("Caught SegkitError in DataLoader worker process 0. Original Traceback ..."): keep its own line."""
    if "\nOriginal Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split("SegkitError: ", 1)[-1]


_PACKAGE = str(Path(__file__).resolve().parents[1])
_show_warning = warnings.showwarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """segkit's own warnings as one `Warning: ...` line (not file:line plus the source line)."""
    if str(filename).startswith(_PACKAGE):
        click.echo(f"Warning: {str(message).splitlines()[0] if str(message) else category.__name__}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


def common_options(function):
    """--config, --set, --runs-dir and --device (parameters config_path, overrides, runs_dir, device)."""
    function = click.option("--device", default=None, help=DEVICE_HELP)(function)
    function = click.option("--runs-dir", "runs_dir", default=None, metavar="DIR", help=RUNS_DIR_HELP)(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(function)
    function = click.option("--config", "config_path", default=None, metavar="FILE|RECIPE", help=_config_help())(function)
    return function


def task_option(function):
    return click.option("--task", type=click.Choice(TASKS), default=None,
                        help="seg: segmentation masks; cls: one class per image/tile. Default: the config's task.")(function)


def run_option(function=None, *, multiple: bool = False, aliases: tuple = (), help: str | None = None):
    """--run/-r RUN (parameter ``run``; a tuple with ``multiple``). -r because torchrun's own parser
    takes --run as its --run-path."""
    text = help or "Run to start from: a run directory or a name under the runs folder. Default: the newest run."

    def decorate(fn):
        return click.option("--run", *aliases, "-r", "run", multiple=multiple, default=None, metavar="RUN",
                            help=text)(fn)

    return decorate(function) if function is not None else decorate


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    """section.key names of a nested override/config mapping (a section's dict value is opened)."""
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not prefix and isinstance(value, dict) and key in ALL_SECTIONS:
            keys += _dotted_keys(value, f"{name}.")
        else:
            keys.append(name)
    return keys


def _reads(key: str, reads: tuple) -> bool:
    return any(key == r or key.startswith(f"{r}.") for r in reads)


def check_keys(command: str, reads: tuple, overrides) -> None:
    """Refuse --set keys outside ``reads`` (sections like "infer" or keys like "data.manifest").

    Only --set: a --config file is usually the project's whole config, shared by train, stats,
    preview and infer, so its other sections are expected there.
    """
    if tuple(reads) == ALL_SECTIONS:
        return
    readable = ", ".join(r if "." in r or r == "task" else f"{r}.*" for r in reads)
    for text in overrides:
        for key in _dotted_keys(parse_override(text)):
            if not _reads(key, reads):
                raise SegkitError(f"--set {key}: `segkit {command}` does not read it (it reads {readable})")


def runs_folder(config_path, overrides, runs_dir) -> Path:
    """Where runs are looked up before any run's config is read: --runs-dir, else run.runs_dir of
    --set, else of --config, else the default."""
    if runs_dir is not None:
        return Path(runs_dir)
    for text in reversed(list(overrides)):
        value = parse_override(text).get("run", {})
        if isinstance(value, dict) and "runs_dir" in value:
            return Path(str(value["runs_dir"]))
    if config_path is not None:
        section = read_config_file(config_path).get("run") or {}
        if isinstance(section, dict) and section.get("runs_dir") is not None:
            return Path(str(section["runs_dir"]))
    return Path(Config().run.runs_dir)


def command_config(command: str, reads: tuple, config_path, overrides, *, runs_dir=None, device=None, task=None,
                   base: Config | None = None, **shortcuts) -> Config:
    """Defaults (or ``base``, a run's config) <- --config <- --set <- dedicated flags (a flag given wins).

    ``shortcuts`` map dotted keys to the values of dedicated flags (None: not given).
    """
    check_keys(command, reads, overrides)
    shortcuts = {**shortcuts, "run.runs_dir": runs_dir, "run.device": device, "task": task}
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    return load_config(config_path, list(overrides) + extra, base=base)


def tracking_options(function):
    """--log and --tracking-uri, shared by the training commands."""
    function = click.option("--tracking-uri", "tracking_uri", default=None, metavar="URI",
                            help="MLflow tracking URI (default: sqlite:///RUNS/mlflow.db).")(function)
    function = click.option("--log", "log", type=click.Choice(["none", "tensorboard", "mlflow"]), default=None,
                            help="Also log epochs to TensorBoard (RUN/tensorboard; pip install tensorboard) or "
                                 "MLflow (params, metrics, artifacts; pip install 'segkit[mlflow]').")(function)
    return function
