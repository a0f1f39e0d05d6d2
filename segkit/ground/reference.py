"""What the settings say about themselves, as text: the defaults file and one key explained.

Both are rendered from the fields of :mod:`segkit.ground.settings`; nothing here restates a
default, a choice or a help line.
"""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from segkit.ground.fields import Setting, show_value
from segkit.ground.settings import iter_settings

HEADER = """\
# segkit configuration: every key, its default and what it does (`segkit config` prints this).
# Load a file or a shipped recipe with `--config FILE|NAME`; override a key with --set section.key=value.
# `segkit config --explain KEY` tells more about one key and which commands read it.
"""
COLUMN = 28  # where the help comments start, as in a hand-aligned YAML file


def yaml_value(value: Any) -> str:
    """A value as one line of YAML flow style (what the defaults file and the docs show)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return text.split("\n...")[0].strip()


def defaults_yaml() -> str:
    """Every key with its default and help, as a YAML document that loads back to the defaults."""
    lines = [HEADER.rstrip("\n")]
    section = None
    for item in iter_settings():
        indent = ""
        if "." in item.key:
            name, key = item.key.split(".", 1)
            if name != section:
                lines.append(f"\n{name}:")
                section = name
            indent = "  "
        else:
            key = item.key
        entry = f"{indent}{key}: {yaml_value(item.default)}"
        choices = f" [{' | '.join(show_value(c) for c in item.choices)}]" if item.choices else ""
        lines.append(f"{entry.ljust(COLUMN - 1)} # {item.help}{choices}")
    return "\n".join(lines) + "\n"


def explain(item: Setting, readers: Iterable[str] = (), flags: Iterable[str] = ()) -> str:
    """A key's help, type, default, allowed values, flag and the commands that read it."""
    lines = [f"{item.key}: {item.help}", f"  type:     {item.type_name}", f"  default:  {yaml_value(item.default)}"]
    if item.choices:
        lines.append(f"  choices:  {', '.join(show_value(c) for c in item.choices)}")
    bounds = [f">= {item.minimum:g}" if item.minimum is not None else "",
              f"<= {item.maximum:g}" if item.maximum is not None else ""]
    if any(bounds):
        lines.append(f"  range:    {' and '.join(b for b in bounds if b)}")
    flags = list(flags)
    if flags:
        lines.append(f"  flag:     {', '.join(flags)}")
    readers = list(readers)
    if readers:
        lines.append(f"  read by:  {', '.join(readers)}")
    if item.doc:
        lines.append(f"  {item.doc}")
    lines.append(f"  set with: --set {item.key}=VALUE, or in a --config file")
    return "\n".join(lines)
