"""Dedicated CLI flags generated from the typed settings.

``@setting_option("infer.threshold")`` adds the flag the field names (``--threshold``) with the
field's type, choices, range and help, and "Default: infer.threshold (0.5)" from the field's
default, so a flag cannot drift from its config key. A given flag's value is kept typed (no
YAML round trip) in the click context; :func:`given_flags` returns them as
``{dotted key: value}`` for :func:`segkit.ground.config.load_config`'s ``values``.
"""

from __future__ import annotations

from typing import Optional

import click

from segkit.ground.fields import Setting, show_value
from segkit.ground.reference import yaml_value
from segkit.ground.settings import find_setting

_META = "segkit.flags"
_TYPES = {"int": int, "float": float, "str": str}


def given_flags(ctx: Optional[click.Context] = None) -> dict:
    """{dotted key: typed value} of the setting flags given to the current command."""
    ctx = ctx or click.get_current_context()
    return dict(ctx.meta.get(_META, {}))


def _remember(key: str):
    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is not None:
            ctx.meta.setdefault(_META, {})[key] = value
        return value

    return callback


def _click_type(item: Setting):
    if item.choices:
        return click.Choice([str(c) for c in item.choices])
    base = item.type_name.split(" | ")[0]
    return _TYPES.get(base, str)


def flag_help(item: Setting, *, default_from: str = "") -> str:
    """The flag's help: the field's help, its range, and where the default comes from."""
    bounds = []
    if item.minimum is not None:
        bounds.append(f">= {item.minimum:g}")
    if item.maximum is not None:
        bounds.append(f"<= {item.maximum:g}")
    span = f" Range: {' and '.join(bounds)}." if bounds else ""
    if default_from:  # the run's own value, which the field's default only started
        return f"{item.help}{span} Default: {default_from}{item.key}."
    default = yaml_value(item.default) if not isinstance(item.default, str) else show_value(item.default)
    return f"{item.help}{span} Default: {item.key} ({default})."


def setting_option(key: str, *, required: bool = False, metavar: Optional[str] = None, default_from: str = "",
                   help: Optional[str] = None):
    """The flag of config key ``key`` as a click option decorator.

    ``default_from`` prefixes where the default comes from ("the run's " for commands that start
    from a run); ``help`` replaces the generated text where a command gives the key another
    meaning (finetune's --size is required and keeps the parent's field of view).
    """
    item = find_setting(key)
    if item.flag is None:
        raise ValueError(f"config key {key} has no flag (give it one in segkit/ground/settings.py)")
    text = help or flag_help(item, default_from=default_from)
    if item.type_name == "bool":
        name = item.flag[2:]
        decls, kind = [f"--{name}/--no-{name}"], {}
    else:
        decls, kind = [item.flag], {"type": _click_type(item), "metavar": metavar}
    option = click.option(*decls, key.replace(".", "__"), default=None, required=required, help=text,
                          expose_value=False, callback=_remember(key), **kind)

    def decorate(function):
        function = option(function)
        function.__click_params__[-1].segkit_key = key  # read by `segkit config --explain`
        return function

    return decorate


def setting_options(*keys: str, default_from: str = ""):
    """Several :func:`setting_option` flags, listed in --help in the order given."""
    def decorate(function):
        for key in reversed(keys):
            function = setting_option(key, default_from=default_from)(function)
        return function

    return decorate
