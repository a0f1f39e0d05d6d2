"""Augmentation pipelines from config: albumentations' own serialized form (A.from_dict / A.to_dict).

Any albumentations transform is available without a registry of ours. The config value under
``augment:`` may be the full ``A.to_dict`` output (``{"__version__": ..., "transform": {...}}``),
just its ``transform`` part, or a list of transform mappings (wrapped in a Compose). Geometric
transforms move image and mask alike (albumentations' ``mask`` target, nearest interpolation).

Optional object copy-paste (segkit.data.copypaste) runs ``order: before`` (default) or ``after``
the albumentations pipeline. Before is the default so pasted objects get the same noise, blur and
colour shifts as everything else in the window instead of standing out as the only clean pixels.

Seeding: one numpy Generator is shared by every transform (albumentations' own ``seed=`` gives
each transform an identically seeded generator, so e.g. HorizontalFlip and VerticalFlip always
fire together). In a DataLoader worker the first call reseeds from the worker's torch seed, so
workers never repeat each other and a run seeded with torch.manual_seed stays reproducible.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import random
import sys
import warnings

import albumentations as A
import numpy as np
from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name

from segkit.data.copypaste import CopyPaste, ObjectBank, split_copy_paste_config
from segkit.ground.errors import SegkitError


def _one_line(exc: Exception) -> str:
    cause = exc
    while cause is not None:  # albumentations re-raises pydantic's ValidationError as a ValueError
        errors = getattr(cause, "errors", None)
        if callable(errors):  # "field: message" per problem
            try:
                return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in errors())
            except Exception:  # noqa: BLE001 - fall back to the plain text below
                break
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


def _load_node(node, where: str):
    """Build one serialized transform (children first, so the innermost bad transform is named)."""
    if not isinstance(node, dict) or "__class_fullname__" not in node:
        raise SegkitError(f"{where}: expected an albumentations transform mapping with '__class_fullname__', got {node!r}"[:300])
    name = str(node["__class_fullname__"])
    short = shorten_class_name(name)
    if short not in SERIALIZABLE_REGISTRY:
        near = difflib.get_close_matches(short, list(SERIALIZABLE_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise SegkitError(f"{where}: unknown albumentations transform '{name}'{hint}")
    node = dict(node)
    if "transforms" in node:
        if not isinstance(node["transforms"], list):
            raise SegkitError(f"{where}: '{name}.transforms' must be a list of transform mappings")
        node["transforms"] = [_load_node(child, f"{where}.transforms[{i}]") for i, child in enumerate(node["transforms"])]
    args = {k: v for k, v in node.items() if k != "__class_fullname__"}
    cls = SERIALIZABLE_REGISTRY[short]
    if "p" not in args and "p" in inspect.signature(cls.__init__).parameters:
        # A.from_dict would force p=0.5; a hand-written mapping without p means the class default.
        args["p"] = inspect.signature(cls.__init__).parameters["p"].default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = cls(**args)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad config value
            raise SegkitError(f"{where}: transform '{name}' does not load: {_one_line(exc)}") from exc
    for w in caught:
        text = str(w.message)
        if "not valid for transform" in text:  # a misspelt argument must not be silently dropped
            raise SegkitError(f"{where}: transform '{name}': {text}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return transform


def load_pipeline(spec, where: str = "augment"):
    """Serialized pipeline (any accepted form) -> albumentations transform, or None for no augmentation."""
    if spec is None or spec == {} or spec == []:
        return None
    if isinstance(spec, list):
        spec = {"__class_fullname__": "Compose", "transforms": spec}
    if isinstance(spec, dict) and "transform" in spec and "__class_fullname__" not in spec:
        extra = set(spec) - {"transform", "__version__"}
        if extra:
            raise SegkitError(f"{where}: unknown key(s) {sorted(extra)} next to 'transform' (expected __version__, transform)")
        return _load_node(spec["transform"], f"{where}.transform")
    return _load_node(spec, where)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def augment_to_dict(pipeline) -> dict:
    """A.to_dict output made YAML/JSON-safe (tuples -> lists) so it compares equal after a reload."""
    if isinstance(pipeline, Augment):
        pipeline = pipeline.transform
    if pipeline is None:
        return {}
    return _json_safe(A.to_dict(pipeline))


class Augment:
    """callable(image HWC float32, mask HW uint8) -> (image, mask); inputs are never modified."""

    def __init__(self, transform=None, copy_paste: CopyPaste | None = None, order: str = "before", seed=None):
        if order not in ("before", "after"):
            raise SegkitError(f"copy_paste.order: expected 'before' or 'after', got {order!r}")
        self.transform = transform
        # A bare transform is wrapped so that one shared generator reaches it and masks are handled alike.
        if transform is None or isinstance(transform, A.BaseCompose):
            self._compose = transform
        else:
            self._compose = A.Compose([transform])
        self.copy_paste, self.order = copy_paste, order
        self.seed, self._pid = None, os.getpid()
        self._range_warned = False
        if seed is not None:  # unseeded: keep each part's own state (e.g. a CopyPaste built with seed=)
            self.reseed(seed)

    def reseed(self, seed) -> None:
        """Seed every random draw (albumentations and copy-paste) from one seed; None -> fresh entropy."""
        self.seed = seed
        self._pid = os.getpid()
        children = np.random.SeedSequence(seed).spawn(3)
        if self._compose is not None:
            py_seed = int(children[1].generate_state(1)[0])
            self._compose.set_random_state(np.random.default_rng(children[0]), random.Random(py_seed))
        if self.copy_paste is not None:
            self.copy_paste.reseed(children[2])

    def _check_process(self) -> None:
        if os.getpid() == self._pid:
            return
        seed = None
        torch = sys.modules.get("torch")
        if torch is not None:
            info = torch.utils.data.get_worker_info()
            seed = None if info is None else int(info.seed)
        self.reseed(seed)

    def _check_range(self, image: np.ndarray) -> None:
        """albumentations clips float images to [0, 1] (and RandomGamma turns negatives into NaN)."""
        if image.dtype.kind != "f" or image.size == 0:
            return
        low, high = float(image.min()), float(image.max())
        if low < -1e-3 or high > 1 + 1e-3:
            warnings.warn(f"augment: window values span [{low:.3g}, {high:.3g}] but albumentations clips float images "
                          "to [0, 1]: augment after stack_channels and before normalize", stacklevel=3)
            self._range_warned = True

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_process()
        paste = self.copy_paste
        if paste is not None and self.order == "before":
            image, mask = paste(image, mask)
        if self._compose is not None:
            if not self._range_warned:
                self._check_range(image)
            try:
                out = self._compose(image=image, mask=mask)
            except (TypeError, ValueError) as exc:
                channels = 1 if image.ndim == 2 else image.shape[-1]
                raise SegkitError(f"augment: the pipeline fails on a {channels}-channel {image.dtype} window: "
                                  f"{_one_line(exc)}") from exc
            image, mask = out["image"], out["mask"]
        if paste is not None and self.order == "after":
            image, mask = paste(image, mask)
        return np.asarray(image, dtype=np.float32), np.asarray(mask, dtype=np.uint8)


def create_augment(spec: dict | list | None, *, copy_paste: dict | CopyPaste | None = None,
                   bank: ObjectBank | None = None, seed=None) -> Augment:
    """Augmentation callable from a serialized albumentations pipeline (None -> identity).

    copy_paste: a CopyPaste, or the ``copy_paste:`` config mapping (p, count, scale, rotate, hflip,
    vflip, class_weights, blur_sigma, seed, order) used with ``bank``.
    """
    transform = load_pipeline(copy.deepcopy(spec))
    order = "before"
    if isinstance(copy_paste, dict):
        config = dict(copy_paste)
        order = config.pop("order", "before")
        kwargs, _bank_kwargs = split_copy_paste_config(config)
        if bank is None:
            raise SegkitError("copy_paste: needs an object bank (segkit.data.copypaste.ObjectBank built from training windows)")
        copy_paste = CopyPaste(bank, **kwargs)
    elif copy_paste is not None and not isinstance(copy_paste, CopyPaste):
        raise SegkitError(f"copy_paste: expected a mapping of settings, got {copy_paste!r}")
    return Augment(transform, copy_paste, order=order, seed=seed)
