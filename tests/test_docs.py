"""The docs site: `mkdocs build --strict` passes, and its generated reference pages are complete.

The build is the real one (mkdocs.yml, docs/, the hook docs/hooks/reference.py that writes the
CLI, configuration and API references from the code), run once per module into a temporary
folder. Strict: a broken link or anchor, a missing snippet, a config key without help text or a
command without help fails the build.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import segkit
from segkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(module_tmp) -> Path:
    out = module_tmp("site")
    result = _mkdocs(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _setting_keys() -> list[str]:
    from segkit.ground.settings import iter_settings

    return [s.key for s in iter_settings()]


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        names.append(prefix + name)
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix}{name} ")
    return names


def test_config_reference_lists_every_key_with_its_help(site):
    page = _page(site, "reference/config")
    keys = _setting_keys()
    assert len(keys) > 50 and "infer.threshold" in keys
    for key in keys:
        assert f'id="{key}"' in page, key
    text = _text(page)
    for setting in _hook().settings():
        assert setting.help.strip().replace("`", "") in text, setting.key


def test_cli_reference_has_every_commands_help(site):
    text = _text(_page(site, "reference/cli"))
    for name in _commands(cli):
        assert f"Usage: segkit {name} [OPTIONS]" in text, name
        assert f'id="{name.replace(" ", "-")}"' in _page(site, "reference/cli"), name
    ctx = click.Context(cli.commands["infer"], info_name="infer", terminal_width=100,
                        parent=click.Context(cli, info_name="segkit", **cli.context_settings))
    assert cli.commands["infer"].get_help(ctx) in text  # the --help a user gets, verbatim


def test_api_reference_and_python_api_page(site):
    api = _page(site, "reference/api")
    for name, (module, attribute) in segkit._API.items():
        assert f"segkit.{name}" in api and f'id="{module}.{attribute}"' in api, name
    assert "Predict <code>image</code> with <code>model</code>" in api  # predict_image's docstring
    guide = _text(_page(site, "python-api"))
    assert 'segkit.predict_image("nuclei.tif", run)' in guide  # the README's executed block, included


def test_moved_sections_are_in_the_site(site):
    """What left the README is on its pages: the bad-input table, the benchmark tables, the layers."""
    assert "| unknown optimizer name |" in (ROOT / "docs/bad-input.md").read_text()
    bench = _text(_page(site, "benchmarks"))
    for heading in ("The demo's figures", "Against a bare loop", "Streaming inference", "Instance figures",
                    "Classification figures", "Study figures", "Progressive training"):
        assert heading in bench, heading
    readme = (ROOT / "README.md").read_text()
    assert "| image | reader | windows/s |" not in readme and len(readme.splitlines()) < 200
    layers = (ROOT / "docs/design.md").read_text()
    from test_layers import LAYERS

    for packages in LAYERS:
        for package in packages:
            if package.count(".") == 1 and package != "segkit.__main__":
                assert f"`{package.split('.')[1]}`" in layers, package


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs/hooks/reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_a_key_without_help_or_a_flag_that_disagrees_stops_the_build():
    from mkdocs.exceptions import PluginError

    from segkit.ground.settings import find_setting

    hook = _hook()
    offered = hook.offered_flags(cli)
    good = find_setting("infer.geojson_crs")
    assert good.flag and offered[good.key]
    assert "### infer.geojson_crs {#infer.geojson_crs}" in hook.render_config([good], offered, {})
    other_choices = [(command, copy.copy(option)) for command, option in offered[good.key]]
    for _, option in other_choices:
        option.type = click.Choice(["raster", "pixel"])
    own_default = [(command, copy.copy(option)) for command, option in offered[good.key]]
    for _, option in own_default:
        option.default = "pixel"
    cases = [([dataclasses.replace(good, help="")], offered, "infer.geojson_crs: no help text"),
             ([dataclasses.replace(good, help="two\nlines")], offered, "more than one line"),
             ([good], {}, "flag --geojson-crs is offered by no command"),
             ([good], {good.key: other_choices}, "`segkit infer --geojson-crs` offers ['raster', 'pixel']"),
             ([good], {good.key: own_default}, "has its own default 'pixel'")]
    for items, flags, message in cases:
        with pytest.raises(PluginError, match=re.escape(message)):
            hook.render_config(items, flags, {})


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own config with one bad link in a page: the strict build refuses it, naming the link."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("api", "cli", "config"):  # without the generated parts (torch, mkdocstrings): keeps this fast
        (tmp_path / f"docs/reference/{name}.md").write_text(f"# {name}\n")
    index = tmp_path / "docs/index.md"
    index.write_text(index.read_text() + "\nSee [the page](no-such-page.md).\n")
    result = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stdout + result.stderr


def test_pages_link_config_keys_and_refuse_unknown_ones():
    from mkdocs.exceptions import PluginError

    hook = _hook()
    page = "Set `infer.threshold`; see `run.json`.\n```yaml\n`infer.threshold`\n```\n"
    linked = hook.link_keys(page, {"infer.threshold"}, "inference.md")
    assert linked.startswith("Set [`infer.threshold`](reference/config.md#infer.threshold); see `run.json`.")
    assert linked.endswith("```yaml\n`infer.threshold`\n```\n")  # code blocks stay as written
    with pytest.raises(PluginError, match=re.escape("inference.md: `infer.threshhold` is not a configuration key")):
        hook.link_keys("`infer.threshhold`", {"infer.threshold"}, "inference.md")


def test_files_the_docs_name_exist():
    """A path the README or a page names (segkit/..., tools/..., tests/..., docs/...) is in the repository."""
    path = re.compile(r"(?<![\w/.~-])((?:segkit|tools|tests|docs|configs)/[\w./-]*\w/?)(?![\w*{])")
    named = {(page.name, match.group(1)) for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for match in path.finditer(page.read_text())}
    assert len(named) > 20
    assert [(page, name) for page, name in sorted(named) if not (ROOT / name).exists()] == []
