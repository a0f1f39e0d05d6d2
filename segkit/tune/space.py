"""The search space of `segkit tune`: a YAML file of config keys and the values to try.

    train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # float range (log scale)
    train.epochs: {low: 2, high: 4}                     # int range (both ends integers)
    data.foreground_share: {low: 0.1, high: 0.6, step: 0.1}
    model.encoder: [resnet18, resnet34]                 # choices (also {choices: [...]})
    train.loss:                                         # choices may be any YAML value
      - [{name: dice, weight: 1.0}]
      - [{name: dice, weight: 1.0}, {name: soft_bce, weight: 1.0}]

Keys are the dotted config keys of `--set` (a section may also be written as a nested mapping).
Each key and each end of its range is checked against the config before any trial runs: an
unknown key, a value of the wrong type, an empty range (low >= high) or an empty list of
choices is one error line naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.ground.safeyaml import safe_load

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key
    low: Any = None
    high: Any = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[tuple] = None

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) \
            and (self.step is None or float(self.step).is_integer())

    def suggest(self, trial) -> Any:
        """One value from an Optuna trial (non-scalar choices travel as their YAML text)."""
        if self.choices is not None:
            texts = [yaml.safe_dump(c, default_flow_style=True).strip().removesuffix("...").strip() for c in self.choices]
            if all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices):
                return trial.suggest_categorical(self.key, list(self.choices))
            return self.choices[texts.index(trial.suggest_categorical(self.key, texts))]
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)


def override(key: str, value: Any) -> str:
    """`--set` text for a value (YAML flow style keeps lists and mappings on one line)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def _entries(tree: dict, path: Path) -> dict:
    out = {}
    for key, value in tree.items():
        key = str(key)
        if "." not in key and isinstance(value, dict) and not (set(value) & (RANGE_KEYS | {"choices"})):
            for inner, spec in value.items():
                out[f"{key}.{inner}"] = spec  # a nested section
        else:
            out[key] = value
    return out


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise SegkitError(f"{where}: {key}: expected {{low, high}} or a list of choices, got {spec!r}")
    unknown = set(spec) - RANGE_KEYS - {"choices"}
    if unknown:
        raise SegkitError(f"{where}: {key}: unknown field(s) {', '.join(sorted(unknown))} (valid: low, high, log, step, choices)")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise SegkitError(f"{where}: {key}: empty list of choices")
        return Dimension(key, choices=tuple(spec["choices"]))
    if "low" not in spec or "high" not in spec:
        raise SegkitError(f"{where}: {key}: a range needs low and high")
    low, high = spec["low"], spec["high"]
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise SegkitError(f"{where}: {key}: {name} {value!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SegkitError(f"{where}: {key}: {name} {value!r} is not a number")
        low, high = (value, high) if name == "low" else (low, value)
    if not low < high:
        raise SegkitError(f"{where}: {key}: empty range (low {low} is not below high {high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise SegkitError(f"{where}: {key}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise SegkitError(f"{where}: {key}: step must be a number > 0 (and not with log: true), got {step!r}")
    return Dimension(key, low=low, high=high, log=log, step=step)


def load_space(path, base: Optional[Config] = None) -> list[Dimension]:
    """Parse and check a space file against `base` (the config every trial starts from)."""
    path = Path(path)
    try:
        tree = safe_load(path.read_text())
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read search space ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SegkitError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(tree, dict) or not tree:
        raise SegkitError(f"{path}: expected a mapping of config keys to ranges or choices")
    dimensions = [_dimension(key, spec, str(path)) for key, spec in _entries(tree, path).items()]
    base = base or Config()
    for dim in dimensions:
        if dim.key.startswith("run."):
            raise SegkitError(f"{path}: {dim.key}: run settings are not searched (each trial is its own run)")
        samples = dim.choices if dim.choices is not None else (dim.low, dim.high)
        for value in samples:
            try:
                load_config(None, [override(dim.key, value)], base=base)
            except SegkitError as exc:
                raise SegkitError(f"{path}: {exc}") from None
    return dimensions
