"""Loading a configuration: defaults <- YAML file or recipe <- overrides, each value checked.

The keys themselves, their defaults, choices and help are the typed fields of
:mod:`segkit.ground.settings`. Unknown keys, values of the wrong type and values outside a
field's choices or range are one-line errors that name the key (and the nearest valid key),
raised before any work starts; :func:`validate` adds the checks that span several keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from segkit.ground.errors import SegkitError
from segkit.ground.fields import brief, check_value
from segkit.ground.safeyaml import safe_load
from segkit.ground.settings import TASKS, Config, DataConfig, InferConfig, ModelConfig, RunConfig, TrainConfig
from segkit.ground.targets import check_target_keys

# Recipes shipped in the wheel: `--config sample` is segkit/configs/sample.yaml.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"
__all__ = ["Config", "RunConfig", "DataConfig", "ModelConfig", "TrainConfig", "InferConfig", "TASKS", "load_config",
           "parse_override", "read_config_file", "find_config", "recipe_names", "to_dict", "flatten_config"]


def _suggest(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"


def _check_type(dotted: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a SegkitError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    base = origin or annotation
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. infer.epochs=7 or run.name=2024: YAML reads them as numbers
    if base is float and isinstance(value, str):
        # PyYAML reads 3e-4 (no dot) as a string; accept any spelling float() accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if base is int and isinstance(value, bool):
        raise SegkitError(f"config key {dotted}: expected int, got {value!r}")
    if not isinstance(value, base):
        raise SegkitError(f"config key {dotted}: expected {base.__name__}, got {type(value).__name__} {brief(value)}")
    return value


def _merge(instance: Any, updates: dict, prefix: str = "") -> Any:
    if not isinstance(updates, dict):
        raise SegkitError(f"config section {prefix.rstrip('.') or '(top)'}: expected a mapping, got {brief(updates)}")
    fields = {f.name: f for f in dataclasses.fields(instance)}
    hints = typing.get_type_hints(type(instance))
    changes = {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise SegkitError(f"unknown config key {dotted}{_suggest(str(key), list(fields), prefix)}")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, prefix=f"{dotted}.")
        else:
            changes[key] = _check_type(dotted, value, hints[key])
            check_value(dotted, changes[key], fields[key])
    return dataclasses.replace(instance, **changes)


def nest(values: Mapping[str, Any]) -> dict:
    """{"infer.threshold": 0.4, "task": "seg"} -> {"infer": {"threshold": 0.4}, "task": "seg"}."""
    tree: dict = {}
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return tree


def parse_override(text: str) -> dict:
    """``section.key=value`` -> nested dict; the value is parsed as YAML (numbers, null, lists)."""
    if "=" not in text:
        raise SegkitError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise SegkitError(f"--set {dotted}: value {raw!r} is not valid YAML ({exc.problem})") from None
    nested: dict = value
    for part in reversed(dotted.strip().split(".")):
        nested = {part: nested}
    return nested


def recipe_names() -> list[str]:
    """The config recipes shipped inside the package (segkit/configs/NAME.yaml)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_config(spec: str | Path) -> Path:
    """A config file path, or the bare name of a shipped recipe (``sample``, ``default``, ...)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in recipe_names():
        return RECIPES_DIR / f"{name}.yaml"
    raise SegkitError(f"{spec}: cannot read config (no such file; recipes shipped with segkit: "
                      f"{', '.join(recipe_names())})")


def read_config_file(spec: str | Path) -> dict:
    """The YAML mapping of a config file or recipe (``find_config``), unchecked."""
    path = find_config(spec)
    try:
        loaded = safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SegkitError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise SegkitError(f"{path}: expected a mapping of sections (run:, data:, ...), got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), base: Config | None = None,
                values: Mapping[str, Any] | None = None) -> Config:
    """Defaults (or ``base``) <- YAML file or recipe name <- ``--set`` overrides <- typed ``values``
    ({dotted key: value}, e.g. from dedicated CLI flags), each checked."""
    config = base or Config()
    if path is not None:
        loaded = read_config_file(path)
        path = find_config(path)
        try:
            config = _merge(config, loaded)
        except SegkitError as exc:
            raise SegkitError(f"{path}: {exc}") from None
    for text in overrides:
        config = _merge(config, parse_override(text))
    if values:
        config = _merge(config, nest(values))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks across keys (one key's type, choices and range are checked as it is merged)."""
    if config.why is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in config.why.items()):
        raise SegkitError("config key why: expected a mapping of dotted key -> reason (text)")
    if (config.data.mean is None) != (config.data.std is None):
        raise SegkitError("config keys data.mean and data.std: give both or neither")
    if config.data.std is not None and any(not isinstance(v, (int, float)) or v <= 0 for v in config.data.std):
        raise SegkitError(f"config key data.std: every value must be a number > 0, got {brief(config.data.std)}")
    if not config.run.experiment.strip():
        raise SegkitError("config key run.experiment: must name an MLflow experiment, got an empty string")
    if not 0 < config.train.subset <= 1:
        raise SegkitError(f"config key train.subset: must be in (0, 1], got {config.train.subset}")
    names = [name.strip() for name in config.infer.rle_header.split(",")]
    if len(names) != 2 or not all(names):
        raise SegkitError("config key infer.rle_header: expected two column names like 'id,rle', got "
                          f"{brief(config.infer.rle_header)}")
    if config.label.low >= config.label.high:
        raise SegkitError(f"config keys label.low ({config.label.low}) and label.high ({config.label.high}): low "
                          "must be below high (pixels between them are left unlabelled)")
    _validate_tiling(config)
    _validate_names(config)


def _validate_tiling(config: Config) -> None:
    """Tile geometry: a margin that leaves no tile. (An overlap of more than half a tile is used as
    half a tile, with a warning: infer/predict.py.)"""
    if config.task == "cls":
        return  # a classifier sees whole images or rows; it predicts no tile grid
    margin_px = config.infer.margin_px
    fov_px = config.data.fov_px or config.data.size
    core = fov_px - 2 * margin_px  # the part of each tile that is kept
    if core < 1:
        raise SegkitError(f"config key infer.margin_px: {margin_px} leaves nothing of a {fov_px} px tile "
                          f"(must be < {(fov_px + 1) // 2})")


def _validate_names(config: "Config") -> None:
    data = config.data
    if data.group_pattern is not None:
        try:
            re.compile(data.group_pattern)
        except re.error as exc:
            raise SegkitError(f"config key data.group_pattern: not a regular expression ({exc})") from None
        if data.fold_method != "group":
            raise SegkitError(f"config key data.group_pattern: used by data.fold_method=group only "
                              f"(it is {data.fold_method!r}); set both")
    _validate_cls(config)
    names = data.class_names
    expected = max(2, config.model.classes)
    if names is not None and config.task == "seg" and len(names) != expected:
        raise SegkitError(f"config key data.class_names: {len(names)} names for {expected} mask values "
                          f"(background first, then one per class)")
    _validate_targets(config)


def _validate_targets(config: Config) -> None:
    check_target_keys(config.data.targets, border_px=config.data.border_px, contact_px=config.data.contact_px,
                      task=config.task, copy_paste=bool(config.data.copy_paste),
                      target_weights=config.train.target_weights)


def _validate_cls(config: Config) -> None:
    """The classification keys (cls and seg+cls)."""
    names, crop = config.data.class_names, config.data.crop_scale
    if names is not None and (not names or any(not isinstance(n, (str, int)) or isinstance(n, bool) or not str(n)
                                               for n in names)):
        raise SegkitError(f"config key data.class_names: expected a list of names, got {brief(names)}")
    if crop is not None and (len(crop) != 2 or not all(isinstance(v, (int, float)) for v in crop)
                             or not 0 < crop[0] <= crop[1] <= 1):
        raise SegkitError(f"config key data.crop_scale: expected [min, max] with 0 < min <= max <= 1, got {brief(crop)}")
    gate = config.infer.cls_gate
    if gate is not None and not 0 < gate <= 1:
        raise SegkitError(f"config key infer.cls_gate: must be in (0, 1] (or null = off), got {gate}")
    if config.train.mixup is not None and config.task != "cls":
        raise SegkitError("config key train.mixup: MixUp/CutMix mixes whole-image labels; only for task cls")


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def flatten_config(tree: dict) -> dict:
    """{"train": {"lr": 1e-3}, "task": "seg"} -> {"train.lr": 1e-3, "task": "seg"}: sections are one level
    deep, so mappings inside a section (data.augment, data.copy_paste) stay values."""
    out = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            out[section] = values
    return out
