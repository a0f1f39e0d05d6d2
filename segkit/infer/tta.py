"""Test-time augmentation: augment/deaugment pairs on NCHW tensors and weighted view sets.

deaugment(model(augment(x, v)), v) is aligned with x again, so views can be averaged
(in probability space by default; the predictor can average logits instead).
"""

from __future__ import annotations

import torch

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import normalise_weights

# view -> (augment, deaugment); H and W are dims 2 and 3
_H, _W = 2, 3
_VIEWS = {
    "identity": (lambda x: x, lambda y: y),
    "hflip": (lambda x: x.flip(_W), lambda y: y.flip(_W)),
    "vflip": (lambda x: x.flip(_H), lambda y: y.flip(_H)),
    "rot90": (lambda x: torch.rot90(x, 1, (_H, _W)), lambda y: torch.rot90(y, -1, (_H, _W))),
    "rot180": (lambda x: torch.rot90(x, 2, (_H, _W)), lambda y: torch.rot90(y, -2, (_H, _W))),
    "rot270": (lambda x: torch.rot90(x, 3, (_H, _W)), lambda y: torch.rot90(y, -3, (_H, _W))),
    "transpose": (lambda x: x.transpose(_H, _W), lambda y: y.transpose(_H, _W)),
    # the anti-diagonal mirror: the eighth element of the dihedral group D4
    "transverse": (lambda x: torch.rot90(x, 2, (_H, _W)).transpose(_H, _W),
                   lambda y: torch.rot90(y.transpose(_H, _W), -2, (_H, _W))),
}
VIEWS = tuple(_VIEWS)

_D4 = ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "transverse")
TTA_SETS: dict[str, list[tuple[str, float]]] = {
    "none": [("identity", 1.0)],
    "hflip": [("identity", 0.6), ("hflip", 0.4)],  # the original weighted more
    "vflip": [("identity", 0.6), ("vflip", 0.4)],
    "flips": [("identity", 1 / 3), ("hflip", 1 / 3), ("vflip", 1 / 3)],
    "d4": [(v, 1 / 8) for v in _D4],
}


def _view(view: str):
    try:
        return _VIEWS[view]
    except KeyError:
        raise SegkitError(f"tta view {view!r}: unknown; valid: {', '.join(VIEWS)}") from None


def augment(x: torch.Tensor, view: str) -> torch.Tensor:
    """x (N, C, H, W) seen through `view`."""
    return _view(view)[0](x)


def deaugment(y: torch.Tensor, view: str) -> torch.Tensor:
    """Undo `view` on a model output (N, C, H', W') so it aligns with the original input."""
    return _view(view)[1](y)


def _normalise(pairs: list[tuple[str, float]], spec) -> list[tuple[str, float]]:
    for view, _ in pairs:
        _view(view)
    weights = normalise_weights([w for _, w in pairs], len(pairs), f"tta {spec!r}")
    return [(v, w) for (v, _), w in zip(pairs, weights)]


def parse_tta(spec) -> list[tuple[str, float]]:
    """(view, weight) pairs with weights summing to 1.

    spec: None / "" / "none"; a named set ("hflip", "vflip", "flips", "d4"); a single view name;
    "view:weight,view:weight,..." (e.g. "identity:0.5,hflip:0.3,vflip:0.2"); or a list of
    (view, weight) pairs / {view: weight} dict (from a config file).
    """
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "none", "None")):
        return list(TTA_SETS["none"])
    if isinstance(spec, dict):
        return _normalise([(str(v), float(w)) for v, w in spec.items()], spec)
    if isinstance(spec, (list, tuple)):
        try:
            pairs = [(str(v), float(w)) for v, w in spec]
        except (TypeError, ValueError):
            raise SegkitError(f"tta {spec!r}: expected (view, weight) pairs") from None
        return _normalise(pairs, spec)
    if not isinstance(spec, str):
        raise SegkitError(f"tta {spec!r}: expected a string like 'hflip' or 'identity:0.6,hflip:0.4'")
    text = spec.strip()
    if text in TTA_SETS:
        return list(TTA_SETS[text])
    pairs = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition(":")
        if not sep:
            if len(text.split(",")) == 1 and name not in _VIEWS:
                raise SegkitError(
                    f"tta {spec!r}: unknown; valid sets: {', '.join(TTA_SETS)}; views: {', '.join(VIEWS)}; "
                    "or 'view:weight,...'")
            weight = "1"
        try:
            pairs.append((name.strip(), float(weight)))
        except ValueError:
            raise SegkitError(f"tta {spec!r}: weight {weight!r} of {name!r} is not a number") from None
    return _normalise(pairs, spec)
