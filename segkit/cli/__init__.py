"""The `segkit` command: thin flags -> Config -> one library call per command.

One module per command family (train.py: train, finetune; infer.py; data.py: stats, preview;
config.py); each defines plain click commands that are registered on the group here and
applies the shared grammar of options.py (--config, --set, --runs-dir, --device, --run).
Library imports happen inside the commands, so `segkit --help` stays fast.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from segkit.cli.auto import auto, plan
from segkit.cli.config import config_command
from segkit.cli.cls import clean, oof
from segkit.cli.data import preview, stats
from segkit.cli.infer import infer
from segkit.cli.label import pseudo, suggest
from segkit.cli.options import SegkitGroup
from segkit.cli.study import evaluate, runs, tune
from segkit.cli.train import finetune, train
from segkit.ground import __version__


@click.group(cls=SegkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segkit")
def cli():
    """segkit: segment very large images the way competition winners do.

    \b
    Progressive training and stitched inference in three commands:
      segkit train --size 256      random windows, low-resolution stage
      segkit finetune --size 512   same field of view at full resolution, from the 256 run
      segkit infer --rle sub.csv   overlapping tiles, blended, TTA + checkpoint ensemble
    Or all of it planned from the data and the time you have:
      segkit auto DATA --budget 10m
    Each run lives in runs/NAME/ (config.yaml, metrics.jsonl, checkpoints/, plots/).
    Every command takes --config FILE|RECIPE (e.g. --config sample), --set KEY=VALUE,
    --runs-dir and --device; `segkit config` prints every key with its default.
    """


for command in (train, finetune, infer, stats, preview, config_command, evaluate, runs, tune, oof, clean, plan, auto,
                suggest, pseudo):
    cli.add_command(command)


PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_library_format = warnings.formatwarning


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """segkit's own warnings print as one `Warning:` line, like its errors; other libraries' keep their origin."""
    if str(filename).startswith(PACKAGE_DIR):
        return f"Warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


def main(argv=None):
    warnings.formatwarning = one_line_warning  # the command's own process only, not on import
    cli.main(args=argv, prog_name="segkit")
