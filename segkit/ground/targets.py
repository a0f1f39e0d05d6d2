"""Instance target names (``data.targets``): the ground floor, so config validation checks them
before any file is read (segkit.data.targets derives the targets themselves)."""

from __future__ import annotations

from segkit.ground.errors import SegkitError

TARGET_NAMES = ("body", "border", "contact")
PRESETS = {"instances": ("body", "border", "contact")}


def parse_targets(spec) -> tuple[str, ...]:
    """``data.targets`` -> target names: None/[] -> () (plain class masks), a preset name
    (``instances``), or a list of names from TARGET_NAMES that starts with ``body``."""
    if spec is None or spec == [] or spec == "":
        return ()
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec]
        spec = [part.strip() for part in spec.split(",")]
    names = tuple(str(name) for name in spec)
    unknown = [name for name in names if name not in TARGET_NAMES]
    if unknown:
        raise SegkitError(f"config key data.targets: unknown target {unknown[0]!r}; valid: "
                          f"{', '.join(TARGET_NAMES)} or a preset ({', '.join(PRESETS)})")
    if len(set(names)) != len(names) or not names or names[0] != "body":
        raise SegkitError(f"config key data.targets: expected body first and each target once, got {list(names)}")
    return names


def check_target_keys(targets, *, border_px: int, contact_px: int, task: str, copy_paste: bool,
                      target_weights) -> None:
    """The instance keys at config load, before any label is opened: their shapes, the target
    names, and what they combine with."""
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise SegkitError(f"config key data.targets: expected a list of names or a preset name, got {targets!r}")
    parse_targets(targets)
    if border_px < 1 or contact_px < 1:
        raise SegkitError("config keys data.border_px and data.contact_px: must be >= 1")
    if targets and task != "seg":
        raise SegkitError(f"config key data.targets: instance targets are for task seg, not {task}")
    if targets and copy_paste:
        raise SegkitError("config key data.copy_paste: pastes class masks; not with data.targets")
    if target_weights is not None and not all(isinstance(w, (int, float)) and w >= 0 for w in target_weights):
        raise SegkitError(f"config key train.target_weights: expected numbers >= 0, got {target_weights!r}")
