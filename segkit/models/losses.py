"""create_loss(): a weighted sum of smp / torch losses named in the config.

    create_loss([{"name": "dice", "weight": 1.0}, {"name": "soft_bce", "weight": 1.0, "pos_weight": 3}], classes=1)

Segmentation: the mode is binary when ``classes == 1`` (logits N,1,H,W) and multiclass
otherwise (logits N,C,H,W). Targets may come as (N,H,W) integer class ids or (N,1,H,W) float
0/1; each term receives the form it needs (class ids, float mask, or one-hot for the BCE family
with several classes). Classification (task="cls"): logits (N,C), targets (N,) class ids or
(N,C) class probabilities (MixUp/CutMix); the cls terms of segkit.models.cls_losses take
probabilities, so class ids are made one-hot for them.
"""

from __future__ import annotations

from typing import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.models.cls_losses import PROBABILITY_LOSSES

# target kinds a term needs: "index" = long class ids without the channel axis,
# "float" = float of the logits' shape (binary), "onehot" = float one-hot (N,C,...) for the BCE family,
# "soft" = (N,C) class probabilities: one-hot from class ids, mixed targets passed through
_L = smp.losses


def _tensor(value):
    """A float tensor from a number or a list (config values), so it registers as a buffer."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    values = value if isinstance(value, (list, tuple)) else [value]
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def _bce(mode, classes, p, task):
    # SoftBCE == BCEWithLogits plus ignore_index and label smoothing. Per-class pos_weight must
    # broadcast over the channel axis: shape (C,1,1) for (N,C,H,W) logits, (C,) for (N,C).
    p = dict(p)
    pw = _tensor(p.pop("pos_weight", None))
    weight = _tensor(p.pop("weight", None))
    if task == "seg":
        pw = None if pw is None else pw.view(-1, 1, 1)
        weight = None if weight is None else weight.view(-1, 1, 1)
    return _L.SoftBCEWithLogitsLoss(pos_weight=pw, weight=weight, **p), ("float" if classes == 1 else "onehot")


def _ce(mode, classes, p, task):
    if classes < 2:
        raise SegkitError("loss.ce: needs classes >= 2 (use bce or soft_bce for one class)")
    p = dict(p)
    weight = _tensor(p.pop("weight", None))
    return nn.CrossEntropyLoss(weight=weight, **p), "index"


def _soft_ce(mode, classes, p, task):
    if classes < 2:
        raise SegkitError("loss.soft_ce: needs classes >= 2 (use soft_bce for one class)")
    p = {"smooth_factor": 0.0, **p}  # smp 0.6 fails on its own default None
    return _L.SoftCrossEntropyLoss(**p), "index"


def _smp(cls) -> Callable:
    def build(mode, classes, p, task):
        return cls(mode=mode, **p), ("float" if mode == "binary" else "index")
    return build


def _mcc(mode, classes, p, task):
    if classes != 1:
        raise SegkitError("loss.mcc: only for one class (binary)")
    return _L.MCCLoss(**p), "float"


SEG_LOSSES: dict[str, Callable] = {
    "dice": _smp(_L.DiceLoss),
    "jaccard": _smp(_L.JaccardLoss),
    "focal": _smp(_L.FocalLoss),
    "lovasz": _smp(_L.LovaszLoss),
    "tversky": _smp(_L.TverskyLoss),
    "soft_bce": _bce,
    "bce": _bce,
    "soft_ce": _soft_ce,
    "ce": _ce,
    "mcc": _mcc,
}
CLS_LOSSES: dict[str, Callable] = {
    **PROBABILITY_LOSSES,  # ce (weighted, label smoothing), focal, asymmetric
    "bce": _bce,
    "soft_bce": _bce,
}


def _parse_terms(terms) -> list[dict]:
    """Accept [{"name": .., "weight": .., **params}], ["dice", "bce"], "dice+bce" or {"dice": 1.0, ...}."""
    if isinstance(terms, str):
        terms = [t.strip() for t in terms.split("+") if t.strip()]
    if isinstance(terms, dict):
        terms = [{"name": k, **(v if isinstance(v, dict) else {"weight": v})} for k, v in terms.items()]
    out = []
    for t in terms or []:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, dict) or "name" not in t:
            raise SegkitError(f"loss: each term needs a name, got {t!r}")
        out.append(dict(t))
    if not out:
        raise SegkitError("loss: no loss terms given")
    return out


class CombinedLoss(nn.Module):
    """sum_i weight_i * loss_i(logits, target_i); ``last`` holds each term's detached value."""

    def __init__(self, names, weights, losses, kinds, classes: int, task: str, ignore_index: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.names = list(names)
        self.weights = [float(w) for w in weights]
        self.losses = nn.ModuleList(losses)
        self.kinds = list(kinds)
        self.classes = classes
        self.task = task
        self.last: dict[str, torch.Tensor] = {}

    def _index(self, logits, target):
        t = target
        if t.dim() == logits.dim():  # (N,1,H,W) -> (N,H,W); (N,1) -> (N,)
            t = t.squeeze(1)
        return t.long()

    def _target(self, kind, logits, target):
        if logits.dim() == 2 and target.is_floating_point() and target.shape == logits.shape:
            return target.to(logits.dtype)  # (N,C) class probabilities (MixUp/CutMix), for every cls term
        if kind == "soft":
            kind = "onehot"
        if kind == "index":
            return self._index(logits, target)
        if kind == "float":
            t = target if target.dim() == logits.dim() else target.unsqueeze(1)
            if not t.is_floating_point():
                # a binary model's foreground is every non-zero label value, as evaluation counts it
                # (segkit.metrics.seg): an id raster or a 0/1/2 mask must not reach BCE as 7 or 2
                t = torch.where((t > 1) & (t != (-1 if self.ignore_index is None else self.ignore_index)),
                                torch.ones_like(t), t)
            return t.to(logits.dtype)
        idx = self._index(logits, target)  # onehot; ignored pixels (out of range) stay as their value
        valid = (idx >= 0) & (idx < self.classes)
        hot = F.one_hot(torch.where(valid, idx, 0), self.classes).movedim(-1, 1).to(logits.dtype)
        # unconditional (asking whether any pixel is ignored would wait on the GPU every batch)
        return torch.where(valid.unsqueeze(1), hot, idx.unsqueeze(1).to(logits.dtype))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cache: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        self.last = {}
        for name, w, loss, kind in zip(self.names, self.weights, self.losses, self.kinds):
            if kind not in cache:
                cache[kind] = self._target(kind, logits, target)
            value = loss(logits, cache[kind])
            self.last[name] = value.detach()
            total = total + w * value
        return total


def loss_names(task: str = "seg") -> list[str]:
    return sorted(SEG_LOSSES if task == "seg" else CLS_LOSSES)


_NO_IGNORE = {"mcc"}


def supports_ignore(terms) -> bool:
    """Whether every term of a loss spec can skip ignored pixels (``ignore_index``)."""
    return not any(str(t.get("name", "")).lower() in _NO_IGNORE for t in _parse_terms(terms))


def create_loss(terms, *, classes: int, task: str = "seg", ignore_index: int | None = None) -> CombinedLoss:
    """Build the weighted sum of the named loss terms for ``classes`` outputs (see module doc).

    ``ignore_index`` (e.g. 255 for "unlabelled" mask pixels) goes to every term that supports
    it unless the term sets its own; those pixels then do not move the loss.
    """
    registry = {"seg": SEG_LOSSES, "cls": CLS_LOSSES}.get(task)
    if registry is None:
        raise SegkitError(f"loss: unknown task {task!r}; valid: seg, cls")
    classes = int(classes)
    mode = "binary" if classes == 1 else "multiclass"
    names, weights, losses, kinds = [], [], [], []
    for term in _parse_terms(terms):
        name = str(term.pop("name")).lower()
        weight = term.pop("weight", 1.0)
        if ignore_index is not None:
            if name in _NO_IGNORE:
                raise SegkitError(f"loss.{name}: does not support ignore_index")
            term.setdefault("ignore_index", int(ignore_index))
        build = registry.get(name)
        if build is None:
            raise SegkitError(f"loss: unknown loss {name!r} for task {task}; valid: {', '.join(sorted(registry))}")
        try:
            loss, kind = build(mode, classes, term, task)
        except TypeError as e:
            raise SegkitError(f"loss.{name}: bad option ({e})") from None
        except ValueError as e:
            raise SegkitError(f"loss.{name}: {e}") from None
        names.append(name if name not in names else f"{name}_{len(names)}")
        weights.append(weight)
        losses.append(loss)
        kinds.append(kind)
    return CombinedLoss(names, weights, losses, kinds, classes, task, ignore_index)


class SegClsLoss(nn.Module):
    """seg+cls: the mask loss plus the tile-class loss, each a CombinedLoss whose term weights set
    the balance (the "multi-input, multi-loss" model of winning teams). Takes (mask logits,
    class logits) and (mask, class ids); ``last`` holds every term as seg_<name> / cls_<name>."""

    def __init__(self, seg: CombinedLoss, cls: CombinedLoss):
        super().__init__()
        self.seg, self.cls = seg, cls
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, outputs, targets) -> torch.Tensor:
        (masks, labels), (mask, target) = outputs, targets
        seg_value, cls_value = self.seg(masks, mask), self.cls(labels, target)
        self.last = {**{f"seg_{k}": v for k, v in self.seg.last.items()},
                     **{f"cls_{k}": v for k, v in self.cls.last.items()}}
        return seg_value + cls_value


def create_task_loss(task: str, *, seg_terms, cls_terms, classes: int, cls_classes: int | None = None,
                     ignore_index: int | None = None) -> nn.Module:
    """The loss of a task: seg -> create_loss(seg_terms), cls -> create_loss(cls_terms),
    seg+cls -> SegClsLoss of both (``classes`` masks, ``cls_classes`` tile classes).
    ``ignore_index`` goes to the mask loss only (unlabelled pixels; class labels have none)."""
    if task == "seg":
        return create_loss(seg_terms, classes=classes, ignore_index=ignore_index)
    if task == "cls":
        return create_loss(cls_terms, classes=classes, task="cls")
    if task == "seg+cls":
        return SegClsLoss(create_loss(seg_terms, classes=classes, ignore_index=ignore_index),
                          create_loss(cls_terms, classes=int(cls_classes or 2), task="cls"))
    raise SegkitError(f"loss: unknown task {task!r}; valid: seg, cls, seg+cls")
