"""Multi-contrast channel stacking: intensity windows of raw bands -> float32 channels in [0, 1].

High-bit-depth images (16-bit microscopy, CT in Hounsfield units, 11/12-bit satellite bands) hold
more contrast than one 8-bit view shows, so a channel list may take the same band several times
through different windows (e.g. CT lung + mediastinum + bone). Windows are applied on the raw
dtype (no 8-bit conversion first): clip to [low, high], scale to [0, 1], then optional gamma.

A channel dict (one per network input channel) takes ``band`` (default 0), at most one window
form, an optional ``gamma`` (> 0, applied after scaling) and an optional free-text ``name``:

    window: [low, high]          or  low: .., high: ..
    center: .., width: ..        (DICOM level/width: low = center - width/2)
    percentiles: [p_lo, p_hi]    (of the image's band, computed once on a thumbnail)
    preset: lung                 (named CT window, see CT_PRESETS)

No window -> the default window of the band's dtype (``default_window``): integers wider than
8 bits (uint16, int16, int32, ...) get the ``DEFAULT_PERCENTILES`` window of the image (on its
thumbnail, like an explicit ``percentiles``), because such data rarely fills its dtype: an 11-bit
satellite band or a 12-bit camera scaled by 0..65535 is nearly black. uint8 keeps [0, 255], bool
[0, 1], float is assumed already in [0, 1] (values outside are clipped). ``spec=None`` -> one
channel per band with that default. The resolved low/high are saved with the run, so ``infer``
applies the same window to every image.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

import numpy as np

from segkit.ground.errors import SegkitError

# Named CT windows as (width, level) in Hounsfield units (common radiology settings).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500, -600),
    "mediastinum": (400, 40),
    "bone": (1500, 300),
    "brain": (80, 40),
    "soft_tissue": (350, 50),
    "abdomen": (400, 50),
    "liver": (150, 30),
    "subdural": (200, 75),
    "stroke": (40, 40),
    "temporal_bone": (2800, 600),
}

# Default window of integer images wider than 8 bits: the 1st-99th percentile (cellpose's
# normalize99; robust to a few hot pixels and to a black border).
DEFAULT_PERCENTILES = (1.0, 99.0)

_KEYS = ("band", "window", "low", "high", "center", "width", "percentiles", "preset", "gamma", "name")


@dataclass(frozen=True)
class ChannelSpec:
    """One network input channel: ``band`` of the raw image through the window [low, high].

    ``percentiles`` is kept after resolution so the run directory records where low/high came
    from; low/high are None only for a percentile window not yet resolved on a thumbnail.
    """

    band: int = 0
    low: float | None = None
    high: float | None = None
    percentiles: tuple[float, float] | None = None
    preset: str | None = None
    gamma: float = 1.0
    name: str | None = None

    @property
    def resolved(self) -> bool:
        return self.low is not None and self.high is not None


def dtype_range(dtype) -> tuple[float, float]:
    """Default window for a dtype: full integer range, [0, 1] for bool and floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind in "bf":
        return 0.0, 1.0
    raise SegkitError(f"channels: unsupported image dtype {dtype}")


def default_window(dtype) -> dict:
    """The window of a channel that names none: ``{"percentiles": DEFAULT_PERCENTILES}`` for
    integers wider than 8 bits, else ``{"low": .., "high": ..}`` = ``dtype_range(dtype)``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and dtype.itemsize > 1:
        return {"percentiles": DEFAULT_PERCENTILES}
    low, high = dtype_range(dtype)
    return {"low": low, "high": high}


def _pair(value, what: str, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SegkitError(f"{where}: {what} must be a list of two numbers, got {value!r}")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise SegkitError(f"{where}: {what} must be a list of two numbers, got {value!r}") from None


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool):
        raise SegkitError(f"{where}: {what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SegkitError(f"{where}: {what} must be a number, got {value!r}") from None


def _parse_one(item: dict, index: int, bands: int, dtype) -> ChannelSpec:
    where = f"channels[{index}]"
    if not isinstance(item, dict):
        raise SegkitError(f"{where}: expected a mapping like {{band: 0, window: [0, 255]}}, got {item!r}")
    for key in item:
        if key not in _KEYS:
            near = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise SegkitError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(_KEYS)}")
    band = item.get("band", 0)
    if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 0 <= band < bands:
        raise SegkitError(f"{where}: band {band!r} does not exist (the image has {bands} band(s): 0..{bands - 1})")
    forms = [f for f, keys in (("window", ("window",)), ("low/high", ("low", "high")),
                              ("center/width", ("center", "width")), ("percentiles", ("percentiles",)),
                              ("preset", ("preset",))) if any(k in item for k in keys)]
    if len(forms) > 1:
        raise SegkitError(f"{where}: give one window form, got {' and '.join(forms)}")
    low = high = percentiles = preset = None
    form = forms[0] if forms else None
    if form == "window":
        low, high = _pair(item["window"], "window", where)
    elif form == "low/high":
        if "low" not in item or "high" not in item:
            raise SegkitError(f"{where}: give both low and high")
        low, high = _number(item["low"], "low", where), _number(item["high"], "high", where)
    elif form == "center/width":
        if "center" not in item or "width" not in item:
            raise SegkitError(f"{where}: give both center and width")
        center, width = _number(item["center"], "center", where), _number(item["width"], "width", where)
        if width <= 0:
            raise SegkitError(f"{where}: width must be > 0, got {width:g}")
        low, high = center - width / 2, center + width / 2
    elif form == "percentiles":
        percentiles = _pair(item["percentiles"], "percentiles", where)
        if not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise SegkitError(f"{where}: percentiles must satisfy 0 <= p_lo < p_hi <= 100, got {list(percentiles)}")
        # A saved spec carries the resolved values next to the percentiles: reuse them (infer).
        if item.get("low") is not None or item.get("high") is not None:
            raise SegkitError(f"{where}: give one window form, got percentiles and low/high")
    elif form == "preset":
        preset = str(item["preset"]).lower()
        if preset not in CT_PRESETS:
            raise SegkitError(f"{where}: unknown preset '{item['preset']}'; valid presets: {', '.join(sorted(CT_PRESETS))}")
        width, level = CT_PRESETS[preset]
        low, high = level - width / 2, level + width / 2
    else:
        default = default_window(dtype)
        low, high, percentiles = default.get("low"), default.get("high"), default.get("percentiles")
    if low is not None and high <= low:
        raise SegkitError(f"{where}: high ({high:g}) <= low ({low:g})")
    gamma = _number(item.get("gamma", 1.0), "gamma", where)
    if gamma <= 0:
        raise SegkitError(f"{where}: gamma must be > 0, got {gamma:g}")
    name = item.get("name")
    return ChannelSpec(int(band), low, high, percentiles, preset, gamma, None if name is None else str(name))


def parse_channels(spec: list[dict] | None, *, bands: int, dtype) -> list[ChannelSpec]:
    """Validate a channel list from the config; None -> one channel per band with its default window."""
    if spec is None:
        return [_parse_one({"band": b}, b, bands, dtype) for b in range(bands)]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise SegkitError(f"channels: expected a non-empty list of channel mappings, got {spec!r}")
    return [_parse_one(item, i, bands, dtype) for i, item in enumerate(spec)]


def resolve_channels(specs: list[ChannelSpec], thumb: np.ndarray) -> list[ChannelSpec]:
    """Fill low/high of percentile windows from a (low-resolution) image; others pass through.

    Called once per image (on its thumbnail), never per window, so windows cut from one image share
    one intensity mapping. A flat band (p_lo == p_hi) gets high = low + 1 so everything maps to 0.
    """
    if thumb.ndim == 2:
        thumb = thumb[..., None]
    out = []
    for i, s in enumerate(specs):
        if s.percentiles is None:
            out.append(s)
            continue
        if s.band >= thumb.shape[-1]:
            raise SegkitError(f"channels[{i}]: band {s.band} does not exist (the image has {thumb.shape[-1]} band(s))")
        values = thumb[..., s.band]
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
        if values.size == 0:
            raise SegkitError(f"channels[{i}]: no finite pixel to compute percentiles {list(s.percentiles)} from")
        low, high = (float(v) for v in np.percentile(values, s.percentiles))
        out.append(replace(s, low=low, high=high if high > low else low + 1.0))
    return out


def stack_channels(raw: np.ndarray, specs: list[ChannelSpec]) -> np.ndarray:
    """Raw HWC (any dtype) -> HWC float32 in [0, 1], one output channel per spec."""
    if raw.ndim == 2:
        raw = raw[..., None]
    # float32 holds every integer up to 2**24 exactly (all 8/16-bit data); wider data goes float64.
    work = np.float64 if raw.dtype.itemsize > 2 and raw.dtype != np.float32 else np.float32
    out = np.empty(raw.shape[:2] + (len(specs),), np.float32)
    for i, s in enumerate(specs):
        if not s.resolved:
            raise SegkitError(f"channels[{i}]: percentile window not resolved; call resolve_channels on a thumbnail first")
        if s.band >= raw.shape[-1]:
            raise SegkitError(f"channels[{i}]: band {s.band} does not exist (the image has {raw.shape[-1]} band(s))")
        x = raw[..., s.band].astype(work)
        x -= work(s.low)
        x /= work(s.high - s.low)  # a division (not * 1/w) so 750/1500 is exactly 0.5
        np.clip(x, 0.0, 1.0, out=x)
        if s.gamma != 1.0:
            np.power(x, work(s.gamma), out=x)
        out[..., i] = x
    return out


def channel_specs_to_dicts(specs: list[ChannelSpec]) -> list[dict]:
    """JSON/YAML-safe dicts that ``channel_specs_from_dicts`` turns back into the same specs."""
    out = []
    for s in specs:
        d: dict = {"band": s.band}
        if s.preset is not None:
            d["preset"] = s.preset
        elif s.percentiles is not None:
            d["percentiles"] = [float(p) for p in s.percentiles]
            if s.resolved:
                d["resolved"] = [float(s.low), float(s.high)]
        else:
            d["window"] = [float(s.low), float(s.high)]
        if s.gamma != 1.0:
            d["gamma"] = float(s.gamma)
        if s.name is not None:
            d["name"] = s.name
        out.append(d)
    return out


def channel_specs_from_dicts(dicts: list[dict], *, bands: int | None = None) -> list[ChannelSpec]:
    """Inverse of ``channel_specs_to_dicts`` (the run directory's record; resolved percentiles kept)."""
    if not isinstance(dicts, (list, tuple)):
        raise SegkitError(f"channels: expected a list of channel mappings, got {dicts!r}")
    specs = []
    for i, d in enumerate(dicts):
        d = dict(d)
        resolved = d.pop("resolved", None)
        # dtype only matters for a spec without a window, which to_dicts never writes.
        spec = _parse_one(d, i, bands if bands is not None else int(d.get("band", 0)) + 1, np.float32)
        if resolved is not None:
            low, high = _pair(resolved, "resolved", f"channels[{i}]")
            spec = replace(spec, low=low, high=high)
        specs.append(spec)
    return specs


# Short names matching the contract wording ("specs_to_dicts / specs_from_dicts").
specs_to_dicts = channel_specs_to_dicts
specs_from_dicts = channel_specs_from_dicts
