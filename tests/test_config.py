"""Config loading: defaults, YAML, --set overrides and one-line errors naming the key."""

from pathlib import Path

import pytest
import yaml

from segkit.ground.config import Config, load_config, parse_override, to_dict
from segkit.ground.errors import SegkitError
from segkit.ground.reference import defaults_yaml
from segkit.runs.rundir import save_config

ROOT = Path(__file__).resolve().parents[1]


def test_printed_defaults_list_every_key_with_its_default():
    assert yaml.safe_load(defaults_yaml()) == to_dict(Config())


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  size: 128\ntrain:\n  lr: 0.01\n")
    config = load_config(path, ["train.lr=3e-4", "model.encoder_weights=imagenet", "infer.crf={iterations: 3}"])
    assert config.data.size == 128
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.encoder_weights == "imagenet"
    assert config.infer.crf == {"iterations": 3}
    assert config.model.arch == "Unet"  # untouched default


def test_numbers_are_accepted_where_floats_or_strings_are_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    assert load_config(None, ["infer.epochs=7"]).infer.epochs == "7"


@pytest.mark.parametrize(
    "override, message",
    [
        (["data.sise=3"], "unknown config key data.sise (did you mean 'data.size'?)"),
        (["trian.lr=1"], "unknown config key trian (did you mean 'train'?)"),
        (["train.lr=abc"], "config key train.lr: expected float, got str 'abc'"),
        (["data.size=true"], "config key data.size: expected int, got True"),
        (["task=xyz"], "config key task: 'xyz' is not one of seg, cls"),
        (["data.size=0"], "config key data.size: must be >= 1, got 0"),
        (["data=3"], "config section data: expected a mapping"),
        (["novalue"], "expected section.key=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(SegkitError) as info:
        load_config(None, override)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arhc: Unet\n")
    with pytest.raises(SegkitError, match=r"bad.yaml: unknown config key model.arhc \(did you mean 'model.arch'\?\)"):
        load_config(path)
    with pytest.raises(SegkitError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("data: [unclosed\n")
    with pytest.raises(SegkitError, match="bad.yaml: not valid YAML"):
        load_config(path)


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["data.size=96", "data.channels=[{band: 0, window: [0, 255]}]"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_parse_override_nests_and_parses_yaml():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("x=null") == {"x": None}


@pytest.mark.parametrize("override, message", [
    (["task=cls", "data.class_names=[]"], "data.class_names: expected a list of names"),
    (["data.crop_scale=[0.8, 0.5]"], "data.crop_scale: expected \\[min, max\\] with 0 < min <= max <= 1"),
    (["data.crop_scale=[0.5]"], "data.crop_scale"),
    (["data.cls_from_mask=-1"], "data.cls_from_mask: must be >= 0"),
    (["infer.cls_gate=1.5"], "infer.cls_gate: must be in \\(0, 1\\]"),
    (["train.mixup={mixup_alpha: 0.2}"], "train.mixup: MixUp/CutMix mixes whole-image labels; only for task cls"),
    (["task=sec+cls"], "task: 'sec\\+cls' is not one of seg, cls, seg\\+cls"),
])
def test_classification_keys_are_checked(override, message):
    with pytest.raises(SegkitError, match=message):
        load_config(None, override)
    assert load_config(None, ["task=cls", "train.mixup={mixup_alpha: 0.2}", "data.crop_scale=[0.5, 1]"]).task == "cls"
