"""MkDocs hook: the reference pages written from the code, so they cannot drift from it.

A page holding ``<!-- generated: NAME -->`` gets that marker replaced when the site is built:

- ``cli``: every command's ``--help``, from the click group ``segkit.cli.cli``;
- ``config``: every configuration key (type, default, choices, range, flag, the commands that
  read it, help) from the typed settings in ``segkit/ground/settings.py``;
- ``api``: mkdocstrings blocks for every public name of ``segkit/__init__.py`` and the modules
  they come from.

On every other page a code span that is a config key (`` `infer.threshold` ``) becomes a link
to its entry in the configuration reference.

A key without help text, a command without a help line, a setting's flag that no command offers
(or offers with other choices, its own default, or a --help that does not name the key its
default comes from), or a page naming a key that does not exist stops the build with an error
naming it: the docs build is part of the test suite, and this is where "every key has help" is
enforced.
"""

from __future__ import annotations

import html
import posixpath
import re

import click
from mkdocs.exceptions import PluginError


def settings() -> list:
    """Every key of the typed settings (``segkit.ground.fields.Setting``), in their own order."""
    from segkit.ground.settings import iter_settings

    return list(iter_settings())


def offered_flags(cli: click.Group) -> dict[str, list[tuple[str, click.Option]]]:
    """config key -> [(command, option)] for every flag generated from a setting (``segkit_key``)."""
    found: dict[str, list] = {}

    def walk(group, prefix):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            for param in command.params:
                if getattr(param, "segkit_key", None):
                    found.setdefault(param.segkit_key, []).append((prefix + name, param))

    walk(cli, "")
    return found


def check_settings(items: list, offered: dict[str, list]) -> None:
    """Stop the build on a key without one line of help, or a flag whose commands disagree with its field."""
    problems = []
    for s in items:
        if not (s.help or "").strip():
            problems.append(f"{s.key}: no help text")
        elif "\n" in s.help.strip():
            problems.append(f"{s.key}: help text is more than one line (longer text goes in 'doc')")
        if s.flag and not offered.get(s.key):
            problems.append(f"{s.key}: flag {s.flag} is offered by no command")
        for command, option in offered.get(s.key, []):
            if s.choices and (not isinstance(option.type, click.Choice)
                              or [str(c) for c in option.type.choices] != [str(c) for c in s.choices]):
                problems.append(f"{s.key}: `segkit {command} {s.flag}` offers "
                                f"{list(getattr(option.type, 'choices', []))}, the setting {list(s.choices)}")
            if option.default is not None:
                problems.append(f"{s.key}: `segkit {command} {s.flag}` has its own default {option.default!r}")
            elif not option.required and s.key not in (option.help or ""):
                problems.append(f"{s.key}: `segkit {command} {s.flag}` --help does not say its default is {s.key}'s")
    if not items:
        problems.append("no configuration keys found")
    if problems:
        raise PluginError("configuration reference: " + "; ".join(problems))


def _facts(s, flags: list[tuple[str, click.Option]], readers: list[str]) -> str:
    from segkit.ground.fields import show_value
    from segkit.ground.reference import yaml_value

    facts = [f"type `{s.type_name}`", f"default `{yaml_value(s.default)}`"]
    if s.choices:
        facts.append("choices " + ", ".join(f"`{show_value(c)}`" for c in s.choices))
    bounds = [f">= {s.minimum:g}" if s.minimum is not None else "", f"<= {s.maximum:g}" if s.maximum is not None else ""]
    if any(bounds):
        facts.append("range " + " and ".join(b for b in bounds if b))
    if flags:
        facts.append(f"flag `{s.flag}` ({', '.join(sorted({c for c, _ in flags}))})")
    if readers:
        facts.append("read by " + ", ".join(readers))
    return " · ".join(facts)


def _markdown(text: str) -> str:
    """Help text as Markdown: HTML-escaped outside `code spans` (so `<command>` is shown, not parsed)."""
    parts = re.split(r"(`[^`]*`)", text.strip())
    return "".join(part if part.startswith("`") else html.escape(part, quote=False) for part in parts)


def render_config(items: list, offered: dict[str, list], readers: dict[str, list[str]]) -> str:
    """Markdown: one section per config section, one entry per key, anchored by the key itself.

    ``readers``: key -> the commands that read it."""
    check_settings(items, offered)
    lines: list[str] = []
    section = None
    for s in items:
        head = s.key.split(".")[0] if "." in s.key else "top level"
        if head != section:
            section = head
            lines += [f"## {section}", ""]
        facts = _facts(s, offered.get(s.key, []), readers.get(s.key, []))
        lines += [f"### {s.key} {{#{s.key}}}", "", _markdown(s.help), "", facts, ""]
        if s.doc.strip():
            lines += [_markdown(s.doc), ""]
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
        from segkit.cli.options import READS, reads_key

        items = settings()
        readers = {s.key: [c for c, reads in sorted(READS.items()) if reads_key(s.key, reads)] for s in items}
        return render_config(items, offered_flags(cli), readers)
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
