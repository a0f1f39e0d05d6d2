"""The grammar every segkit command shares, as option decorators other command modules apply.

- ``common_options``: ``--config FILE|RECIPE``, ``--set KEY=VALUE`` (repeatable),
  ``--runs-dir DIR`` and ``--device auto|cpu|cuda|cuda:N`` on every command;
- ``task_option``: ``--task seg|cls`` where a command builds a model or its data;
- ``run_option``: ``--run/-r RUN`` wherever a command starts from a run (``--from`` is finetune's
  alias; ``train --resume RUN`` stays), resolved the same way everywhere (:func:`find_runs`);
- :func:`command_config`: defaults (or a run's config) <- ``--config`` <- ``--set`` <- dedicated
  flags (typed, generated from the settings: ``segkit.cli.flags``), refusing ``--set`` keys the
  command does not read (``infer --set train.lr=1`` is an error that names what infer reads,
  instead of silently doing nothing). What each command reads is the table :data:`READS`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from segkit.cli.flags import given_flags, setting_option
from segkit.ground.config import Config, load_config, parse_override, read_config_file, recipe_names
from segkit.ground.errors import SegkitError, reset_warnings
from segkit.io.atomic import disk_error_line

ALL_SECTIONS = ("task", "run", "data", "model", "train", "infer", "label")
DATA_SECTIONS = ("task", "run", "data")
# What each command reads of a config; `--set` keys outside it are refused, and `segkit config
# --explain KEY` lists the commands that read KEY. infer reads its own section, the run section,
# where the images and class names come from, and AMP; the rest belongs to the trained run.
READS = {
    "train": ALL_SECTIONS, "finetune": ALL_SECTIONS, "config": ALL_SECTIONS, "tune": ALL_SECTIONS,
    "oof": ALL_SECTIONS, "plan": ALL_SECTIONS, "auto": ALL_SECTIONS,
    # evaluate --run scores the run as `segkit infer` would predict it; evaluate --pred reads labels
    "evaluate --run": ("infer", "run", "train.amp"),
    "evaluate": ("task", "run", "data", "model.classes", "infer.rle_order"),
    "infer": ("infer", "run", "data.manifest", "data.class_names", "train.amp"),
    # suggest / pseudo predict as infer does, plus their own label section
    "suggest": ("label", "infer", "run", "data.manifest", "data.class_names", "data.tissue", "train.amp"),
    "pseudo": ("label", "infer", "run", "data.class_names", "train.amp"),
    "stats": DATA_SECTIONS, "preview": DATA_SECTIONS, "clean": DATA_SECTIONS, "runs": ("run",),
}
SET_HELP = "Override one config key, e.g. --set train.lr=3e-4 (repeatable; value parsed as YAML)."


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
    """--config, --set (parameters config_path, overrides), --runs-dir and --device (setting flags)."""
    function = setting_option("run.device")(function)
    function = setting_option("run.runs_dir", metavar="DIR")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(function)
    function = click.option("--config", "config_path", default=None, metavar="FILE|RECIPE", help=_config_help())(function)
    return function


def task_option(function):
    return setting_option("task")(function)


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


def reads_key(key: str, reads: tuple) -> bool:
    """True when a command reading ``reads`` (sections or dotted keys) reads ``key``."""
    return any(key == r or key.startswith(f"{r}.") for r in reads)


def check_keys(command: str, overrides) -> None:
    """Refuse --set keys outside ``reads`` (sections like "infer" or keys like "data.manifest").

    Only --set: a --config file is usually the project's whole config, shared by train, stats,
    preview and infer, so its other sections are expected there.
    """
    reads = READS[command]
    if tuple(reads) == ALL_SECTIONS:
        return
    readable = ", ".join(r if "." in r or r == "task" else f"{r}.*" for r in reads)
    for text in overrides:
        for key in _dotted_keys(parse_override(text)):
            if not reads_key(key, reads):
                raise SegkitError(f"--set {key}: `segkit {command}` does not read it (it reads {readable})")


def runs_folder(config_path, overrides) -> Path:
    """Where runs are looked up before any run's config is read: --runs-dir, else run.runs_dir of
    --set, else of --config, else the default."""
    runs_dir = given_flags().get("run.runs_dir")
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


def command_config(command: str, config_path, overrides, *, base: Config | None = None,
                   values: dict | None = None) -> Config:
    """Defaults (or ``base``, a run's config) <- --config <- --set <- the setting flags given to the
    current command <- ``values`` (what the command itself fixes), refusing --set keys it does not read."""
    check_keys(command, overrides)
    return load_config(config_path, list(overrides), base=base, values={**given_flags(), **(values or {})})


def tracking_options(function):
    """--log and --tracking-uri, shared by the training commands."""
    function = setting_option("run.tracking_uri", metavar="URI")(function)
    return setting_option("run.log")(function)
