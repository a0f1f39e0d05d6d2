"""MkDocs hook: the reference pages written from the code, so they cannot drift from it.

A page holding ``<!-- generated: NAME -->`` gets that marker replaced when the site is built:

- ``cli``: every command's ``--help``, from the click group ``segkit.cli.cli``;
- ``config``: every configuration key (type, default, choices, flag, help) from the typed
  settings in ``segkit/ground/config.py``;
- ``api``: mkdocstrings blocks for every public name of ``segkit/__init__.py`` and the modules
  they come from.

On every other page a code span that is a config key (`` `infer.threshold` ``) becomes a link
to its entry in the configuration reference.

A key without help text, a command without a help line, a settings flag that no command offers
(or offers with other choices), or a page naming a key that does not exist stops the build with
an error naming it: the docs build is part of the test suite, and this is where "every key has
help" is enforced.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import click
import yaml
from mkdocs.exceptions import PluginError


@dataclass(frozen=True)
class Setting:
    """One configuration key as the reference shows it (the shape of ``iter_settings()``'s items)."""

    key: str
    default: Any
    type_name: str
    help: str = ""
    choices: Optional[tuple] = None
    flag: Optional[str] = None
    doc: str = ""


def settings() -> list[Setting]:
    """Every key of the typed settings: ``segkit.ground.settings.iter_settings()`` when it exists,
    else the fields of ``Config`` and their ``metadata`` (help, choices, flag, doc)."""
    try:
        from segkit.ground.settings import iter_settings
    except ImportError:
        return list(_fields_of_config())
    return [Setting(key=s.key, default=s.default, type_name=str(getattr(s, "type_name", "")),
                    help=s.help or "", choices=tuple(s.choices) if s.choices else None,
                    flag=getattr(s, "flag", None), doc=getattr(s, "doc", "") or "")
            for s in iter_settings()]


def _fields_of_config() -> Iterable[Setting]:
    from segkit.ground.config import Config

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints.get(f.name)):
                yield from walk(hints[f.name], key + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            meta = f.metadata
            yield Setting(key=key, default=default, type_name=_type_name(hints.get(f.name, f.type)),
                          help=meta.get("help", ""), choices=tuple(meta["choices"]) if meta.get("choices") else None,
                          flag=meta.get("flag"), doc=meta.get("doc", ""))

    yield from walk(Config, "")


def _type_name(annotation) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


def _yaml(value) -> str:
    """A value as the user writes it in YAML or after ``--set key=``: null, true, [a, b], {p: 0.5}."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _flag_commands(cli: click.Group) -> dict[str, list[tuple[str, click.Option]]]:
    """flag -> [(command name, option)] over every command of the group (nested groups too)."""
    found: dict[str, list] = {}

    def walk(group, prefix):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            for param in command.params:
                if isinstance(param, click.Option):
                    for opt in param.opts + param.secondary_opts:
                        found.setdefault(opt, []).append((prefix + name, param))

    walk(cli, "")
    return found


def check_settings(items: list[Setting], flags: dict[str, list]) -> None:
    """Stop the build on a key without help, or a flag the commands do not offer as the setting says."""
    problems = []
    for s in items:
        if not s.help.strip():
            problems.append(f"{s.key}: no help text")
        elif "\n" in s.help.strip():
            problems.append(f"{s.key}: help text is more than one line (longer text goes in 'doc')")
        if s.flag:
            offered = flags.get(s.flag, [])
            if not offered:
                problems.append(f"{s.key}: flag {s.flag} is offered by no command")
            for command, option in offered:
                if s.choices and isinstance(option.type, click.Choice) and \
                        {str(c) for c in option.type.choices} != {str(c) for c in s.choices}:
                    problems.append(f"{s.key}: `segkit {command} {s.flag}` offers {list(option.type.choices)}, "
                                    f"the setting {list(s.choices)}")
    if not items:
        problems.append("no configuration keys found")
    if problems:
        raise PluginError("configuration reference: " + "; ".join(problems))


def render_config(items: list[Setting], flags: dict[str, list]) -> str:
    """Markdown: one section per config section, one entry per key with an anchor of the key itself."""
    check_settings(items, flags)
    lines: list[str] = []
    section = None
    for s in items:
        head = s.key.split(".")[0] if "." in s.key else "top level"
        if head != section:
            section = head
            lines += [f"## {section}", ""]
        facts = [f"type `{s.type_name}`" if s.type_name else None, f"default `{_yaml(s.default)}`",
                 "choices " + ", ".join(f"`{c}`" for c in s.choices) if s.choices else None]
        if s.flag:
            commands = sorted({c for c, _ in flags.get(s.flag, [])})
            facts.append(f"flag `{s.flag}` ({', '.join(commands)})")
        lines += [f"### {s.key} {{#{s.key}}}", "", s.help.strip(), "", " · ".join(f for f in facts if f), ""]
        if s.doc.strip():
            lines += [s.doc.strip(), ""]
    return "\n".join(lines)


def render_cli(cli: click.Group) -> str:
    """Markdown: the group's help, then every command's ``--help`` in a text block."""
    lines: list[str] = []
    root = click.Context(cli, info_name="segkit", **{**cli.context_settings, "terminal_width": 100})
    lines += ["## segkit {#segkit}", "", "```text", cli.get_help(root), "```", ""]

    def walk(group, context, prefix):
        for name, command in sorted(group.commands.items()):
            if not (command.help or command.short_help):
                raise PluginError(f"CLI reference: `segkit {prefix}{name}` has no help text")
            ctx = click.Context(command, info_name=name, parent=context, terminal_width=100)
            anchor = f"{prefix}{name}".replace(" ", "-")
            lines.extend([f"## segkit {prefix}{name} {{#{anchor}}}", "", "```text", command.get_help(ctx), "```", ""])
            if isinstance(command, click.Group):
                walk(command, ctx, f"{prefix}{name} ")

    walk(cli, root, "")
    return "\n".join(lines)


def render_api(public: dict[str, tuple[str, str]], summaries: dict[str, str]) -> str:
    """Markdown: a table of the public names linking into their modules, then each module in full
    (mkdocstrings; an object's anchor is its dotted path)."""
    lines = ["## Public names", "", "| name | what it is |", "|---|---|"]
    for name, (module, attribute) in public.items():
        lines.append(f"| [`segkit.{name}`](#{module}.{attribute}) | {summaries.get(name, '')} |")
    lines += ["", "## Modules", ""]
    for module in dict.fromkeys(module for module, _ in public.values()):
        lines += [f"::: {module}", "    options:", "      show_root_full_path: true", ""]
    return "\n".join(lines)


def _summaries(public: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The first paragraph of each public name's docstring, read statically by griffe (as
    mkdocstrings does), so the build does not import torch."""
    import griffe

    package = griffe.load("segkit", resolve_aliases=False)
    out = {}
    for name, (module, attribute) in public.items():
        docstring = package[f"{module.removeprefix('segkit.')}.{attribute}"].docstring
        if docstring is None or not docstring.value.strip():
            raise PluginError(f"API reference: segkit.{name} ({module}.{attribute}) has no docstring")
        out[name] = " ".join(docstring.value.strip().split("\n\n")[0].split()).replace("|", "\\|")
    return out


def generated(name: str) -> str:
    if name == "cli":
        from segkit.cli import cli

        return render_cli(cli)
    if name == "config":
        from segkit.cli import cli

        return render_config(settings(), _flag_commands(cli))
    if name == "api":
        import segkit

        return render_api(segkit._API, _summaries(segkit._API))
    raise PluginError(f"unknown generated page {name!r}")


FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.M | re.S)
KEY_SPAN = re.compile(r"(?<![\[`])`((?:run|data|model|train|infer)\.[a-z_]+)`(?![`\]])")
FILE_SUFFIXES = {"json", "jsonl", "csv", "yaml", "yml", "py", "md", "pt", "tif", "png", "txt", "npz", "db"}


def link_keys(markdown: str, keys: set[str], page_uri: str) -> str:
    """Link every code span that names a config key to its reference entry (outside fenced code);
    a span that looks like a key but names none (a key renamed or removed) stops the build."""
    target = posixpath.relpath("reference/config.md", posixpath.dirname(page_uri) or ".")

    def link(match):
        key = match.group(1)
        if key in keys:
            return f"[`{key}`]({target}#{key})"
        if key.rsplit(".", 1)[1] in FILE_SUFFIXES:
            return match.group(0)
        raise PluginError(f"{page_uri}: `{key}` is not a configuration key")

    out, end = [], 0
    for fence in FENCE.finditer(markdown):
        out += [KEY_SPAN.sub(link, markdown[end:fence.start()]), fence.group(0)]
        end = fence.end()
    out.append(KEY_SPAN.sub(link, markdown[end:]))
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    for name in ("cli", "config", "api"):
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            return markdown.replace(marker, generated(name))
    return link_keys(markdown, {s.key for s in settings()}, page.file.src_uri)
