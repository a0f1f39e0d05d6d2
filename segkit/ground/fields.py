"""A setting is one dataclass field that carries its own default, allowed values and help.

Every other place a setting appears is derived from its field: the range and choice checks at
config load (:func:`check_value`), the CLI flag (``segkit.cli.flags``), ``segkit config`` and
``segkit config --explain`` (``segkit.ground.reference``), and the docs' configuration
reference. Nothing restates a default or a choice list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Optional

from segkit.ground.errors import SegkitError


def setting(default: Any = MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
            choices: Optional[tuple] = None, flag: Optional[str] = None, minimum: Optional[float] = None,
            maximum: Optional[float] = None, doc: str = "") -> Any:
    """A dataclass field for one config key.

    Args:
        default: the value when nothing sets the key (``factory`` for lists and dicts).
        help: one line saying what the key does; shown by ``--help``, ``config --explain`` and the docs.
        choices: the allowed values, when the key is an enumeration.
        flag: the dedicated CLI flag (``--threshold``) of the commands that offer one.
        minimum, maximum: inclusive bounds of a number (None: unbounded).
        doc: longer text for the docs and ``--explain`` (examples, the measurement behind a default).
    """
    if not help or "\n" in help:
        raise ValueError(f"a setting needs one line of help, got {help!r}")
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag,
                "minimum": minimum, "maximum": maximum, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """What one field says about its key (read by the CLI, ``--explain`` and the docs)."""

    key: str  # dotted: "infer.threshold"; "task" at the top level
    type_name: str  # "int", "float", "str", "bool", "list", "dict", with "| null" when null is allowed
    default: Any
    help: str
    choices: Optional[tuple]
    flag: Optional[str]
    minimum: Optional[float]
    maximum: Optional[float]
    doc: str


def describe(key: str, field: dataclasses.Field, annotation: Any) -> Setting:
    """The :class:`Setting` of one dataclass field (``annotation`` is its resolved type hint)."""
    meta = field.metadata
    default = field.default_factory() if field.default_factory is not MISSING else field.default
    return Setting(key=key, type_name=type_name(annotation), default=default, help=meta.get("help", ""),
                   choices=meta.get("choices"), flag=meta.get("flag"), minimum=meta.get("minimum"),
                   maximum=meta.get("maximum"), doc=meta.get("doc", ""))


def type_name(annotation: Any) -> str:
    import types
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(names + (["null"] if type(None) in args else []))
    if annotation is object:
        return "any"
    return getattr(typing.get_origin(annotation) or annotation, "__name__", str(annotation))


def show_value(value: Any) -> str:
    """A value as a user types it in YAML or on the command line ('' for the empty string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (value == "" or value.strip() != value or "," in value):
        return repr(value)
    return str(value)


def check_value(key: str, value: Any, field: dataclasses.Field) -> None:
    """The choice and range checks a field declares (types are checked before this)."""
    meta = field.metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        raise SegkitError(f"config key {key}: {brief(value)} is not one of "
                          f"{', '.join(show_value(c) for c in choices)}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and high is not None and not low <= value <= high:
        raise SegkitError(f"config key {key}: must be in [{low:g}, {high:g}], got {value}")
    if low is not None and value < low:
        raise SegkitError(f"config key {key}: must be >= {low:g}, got {value}")
    if high is not None and value > high:
        raise SegkitError(f"config key {key}: must be <= {high:g}, got {value}")


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` when short, else a summary: an error message never prints an unbounded value
    (a YAML document of nested aliases can expand to gigabytes)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict)):
        text = repr(value) if len(value) <= 8 else ""
        return text if text and len(text) <= limit else f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__name__}>"
