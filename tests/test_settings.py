"""One place per setting: every key's field carries its help, default and choices, and the CLI
flags, `segkit config`, `config --explain` and range checks are all derived from it."""

import click
import pytest
import yaml
from click.testing import CliRunner

from segkit.cli import cli
from segkit.cli.flags import flag_help
from segkit.ground.config import Config, load_config, to_dict
from segkit.ground.errors import SegkitError
from segkit.ground.fields import show_value
from segkit.ground.reference import defaults_yaml, yaml_value
from segkit.ground.settings import find_setting, iter_settings

SETTINGS = list(iter_settings())


def _flag_params():
    """(command name, click option, config key) of every flag generated from a setting."""
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if getattr(param, "segkit_key", None):
                yield name, param, param.segkit_key


def test_every_key_of_the_config_is_a_described_setting():
    flat = {f"{section}.{key}" if isinstance(values, dict) else section
            for section, values in to_dict(Config()).items()
            for key in (values if isinstance(values, dict) else [None])}
    assert {s.key for s in SETTINGS} == flat
    for item in SETTINGS:
        assert item.help and "\n" not in item.help and len(item.help) <= 130, item.key
        assert item.type_name, item.key
        if item.choices:
            assert item.default in item.choices, item.key


def test_printed_defaults_carry_every_key_its_help_and_its_choices():
    text = defaults_yaml()
    assert yaml.safe_load(text) == to_dict(Config())
    for item in SETTINGS:
        key = item.key.split(".")[-1]
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:") and item.help in line)
        if item.choices:
            assert f"[{' | '.join(show_value(c) for c in item.choices)}]" in line, line


@pytest.mark.parametrize("command, param, key", list(_flag_params()), ids=lambda v: getattr(v, "name", str(v)))
def test_a_flag_has_its_settings_help_default_and_choices(command, param, key):
    item = find_setting(key)
    assert param.opts[0].lstrip("-").startswith(item.flag.lstrip("-")), (command, param.opts)
    if isinstance(param.type, click.Choice):
        assert tuple(param.type.choices) == tuple(str(c) for c in item.choices)
    else:
        assert not item.choices
    text = CliRunner().invoke(cli, [command, "--help"], terminal_width=400).output
    helps = " ".join(text.split())
    if command in ("finetune", "infer", "suggest", "pseudo") and key not in ("run.runs_dir", "run.device", "run.name", "data.size",
                                                        "run.log", "run.tracking_uri", "task"):
        assert f"Default: the " in helps and key in helps  # the run's or the parent's value
    elif param.help.startswith(item.help):
        assert " ".join(flag_help(item).split()) in helps, (command, key)


def test_explain_names_the_help_default_choices_flag_and_readers():
    result = CliRunner().invoke(cli, ["config", "--explain", "infer.geojson_crs"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"infer.geojson_crs: {find_setting('infer.geojson_crs').help}")
    assert "default:  raster" in out and "choices:  raster, pixel, wgs84" in out
    assert "segkit infer --geojson-crs" in out and "read by:" in out and "infer" in out.split("read by:")[1]
    assert "stats" not in out.split("read by:")[1]  # stats reads task, run and data only
    bad = CliRunner().invoke(cli, ["config", "--explain", "infer.treshold"])
    assert bad.exit_code == 1 and bad.output.strip().startswith("Error: --explain unknown config key infer.treshold")
    assert "infer.threshold" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("key, value, message", [
    ("infer.geojson_crs", "utm", "config key infer.geojson_crs: 'utm' is not one of raster, pixel, wgs84"),
    ("infer.rle_empty", "x", "config key infer.rle_empty: 'x' is not one of '', -"),
    ("infer.threshold", 1.5, "config key infer.threshold: must be in [0, 1], got 1.5"),
    ("data.val_fold", -1, "config key data.val_fold: must be >= 0, got -1"),
    ("train.keep_last", 0, "config key train.keep_last: must be >= 1, got 0"),
])
def test_choices_and_ranges_come_from_the_field(key, value, message):
    with pytest.raises(SegkitError) as info:
        load_config(None, values={key: value})
    assert str(info.value) == message


def test_flags_pass_typed_values_without_a_yaml_round_trip(tmp_path):
    """'-', '' and 'null'-looking strings reach the config as the strings typed (no YAML parsing)."""
    config = load_config(None, values={"infer.rle_empty": "-", "run.name": "null", "infer.rle_header": "a,b"})
    assert config.infer.rle_empty == "-" and config.run.name == "null"
    result = CliRunner().invoke(cli, ["config", "--runs-dir", "null"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["run"]["runs_dir"] == "null"


def test_an_error_never_prints_an_unbounded_value():
    with pytest.raises(SegkitError) as info:
        load_config(None, ["data.group_pattern=[" + ", ".join(["aaaaaaaaaa"] * 10000) + "]"])
    assert len(str(info.value)) < 200 and "list of 10000 items" in str(info.value)


def test_choice_lists_match_the_registries_that_build_them():
    from segkit.train.optim import OPTIMIZERS, SCHEDULERS

    assert set(find_setting("train.optimizer").choices) == set(OPTIMIZERS)
    assert set(find_setting("train.scheduler").choices) == set(SCHEDULERS)


@pytest.mark.parametrize("recipe", ["histology", "aerial", "ct", "small_images", "classification", "digits", "sample"])
def test_each_kind_of_data_has_a_recipe_that_loads_and_builds(recipe):
    """The recipes users copy: every key known, every name (losses, channel presets) buildable."""
    import numpy as np

    from segkit.data.channels import parse_channels
    from segkit.train.preflight import check_names

    config = load_config(recipe)
    if config.task == "cls":  # training sets model.classes from the class names (or the manifest's)
        names = config.data.class_names or ["cat", "dog"]
        config = load_config(recipe, values={"data.class_names": names, "model.classes": len(names)})
    check_names(config)
    specs = parse_channels(config.data.channels, bands=3, dtype=np.dtype("int16"))
    assert len(specs) >= 1
