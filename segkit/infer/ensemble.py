"""The default predictor: a weighted ensemble of models x test-time views on one batch.

`predict_strips` takes any callable ``predictor(x: NCHW float) -> NCHW probs float32`` (as
MONAI's sliding window takes one); :class:`EnsemblePredictor` is the one segkit builds from
checkpoints: the probabilities (or logits) of every model under every TTA view, deaugmented
and averaged with weights (epoch ensembles, run ensembles and weighted TTA all meet here).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import normalise_weights
from segkit.infer.tta import augment, deaugment, parse_tta
from segkit.runs.device import autocast

ACTIVATIONS = ("sigmoid", "softmax", "identity")


def _activate(out: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(out)
    if activation == "softmax":
        return torch.softmax(out, dim=1)
    if activation in (None, "identity", "none"):
        return out
    raise SegkitError(f"activation {activation!r}: valid: {', '.join(ACTIVATIONS)}")


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):  # torchvision-style {"out": ...}
        out = out["out"]
    elif isinstance(out, (tuple, list)):  # smp aux heads: (mask, label)
        out = out[0]
    return out


def predict_batch(models, x: torch.Tensor, tta, *, activation="sigmoid", amp=False,
                  average="probs") -> torch.Tensor:
    """Weighted average over models x views of one NCHW batch -> probs float32 (N, C, H, W).

    models and tta are (item, weight) lists with normalised weights. average="probs" averages
    after the activation (default); "logits" averages raw outputs and activates once.
    """
    if average not in ("probs", "logits"):
        raise SegkitError(f"tta average {average!r}: valid: probs, logits")
    total = None
    for out, weight in member_outputs(models, x, tta, activation=activation if average == "probs" else None,
                                      amp=amp):
        out = out * weight
        total = out if total is None else total + out
    if average == "logits":
        total = _activate(total, activation)
    return total.float()


def member_outputs(models, x: torch.Tensor, tta, *, activation="sigmoid", amp=False):
    """Yield (output float32 NCHW, weight) per model x view of one batch, deaugmented and activated
    (``activation`` None: raw logits); the weights are the products of the normalised model and
    view weights. The one forward loop of the ensemble: its mean (predict_batch) and the spread of
    its members (segkit.infer.members) come from the same outputs."""
    with torch.inference_mode(), autocast(x.device, amp):
        for model, m_weight in models:
            for view, v_weight in tta:
                out = deaugment(_forward(model, augment(x, view)), view).float()
                yield (out if activation is None else _activate(out, activation)), m_weight * v_weight




def weighted(pairs: Sequence[tuple[object, float]], what: str) -> list[tuple[object, float]]:
    """(item, weight) pairs with the weights normalised to sum to 1."""
    if not pairs:
        raise SegkitError(f"{what}: no {what} given")
    weights = normalise_weights([w for _, w in pairs], len(pairs), what)
    return [(item, w) for (item, _), w in zip(pairs, weights)]


class EnsemblePredictor:
    """``predictor(x)``: the weighted mean over ``models`` x ``tta`` views of one NCHW batch.

    models: (module, weight) pairs; tta: (view, weight) pairs or a parse_tta spec ("hflip",
    "d4", "identity:0.6,hflip:0.4", ...); both weight lists are normalised. activation:
    sigmoid, softmax or identity; amp: bf16 autocast on CPU, fp16 on CUDA; average: "probs"
    (activate each view, then average) or "logits" (average, then activate once).
    """

    def __init__(self, models: Sequence[tuple[nn.Module, float]], tta="none", *, activation: str | None = "sigmoid",
                 amp: bool = False, average: str = "probs"):
        self.models = weighted(list(models), "models")
        self.tta = weighted(parse_tta(tta) if tta is None or isinstance(tta, str) else list(tta), "tta")
        if average not in ("probs", "logits"):
            raise SegkitError(f"tta average {average!r}: valid: probs, logits")
        _activate(torch.zeros(1, 1, 1, 1), activation)  # an unknown activation fails now, not mid-image
        self.activation, self.amp, self.average = activation, bool(amp), average

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return predict_batch(self.models, x, self.tta, activation=self.activation, amp=self.amp,
                             average=self.average)

    @contextlib.contextmanager
    def prepared(self, device: torch.device) -> Iterator["EnsemblePredictor"]:
        """Models in eval mode, channels_last on ``device`` while in use; modes and layouts restored after."""
        with evaluating([m for m, _ in self.models], device):
            yield self


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D weights are in channels_last layout (True for a model without any)."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return not weights or weights[0].is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def evaluating(models: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """``models`` in eval mode and channels_last on ``device`` inside; their train/eval modes and
    memory layouts restored after. A model being trained (validation inside training, perhaps under
    DDP with train.channels_last off) thus comes back with the strides its gradient buckets expect."""
    was = [(m.training, _channels_last(m)) for m in models]
    for m in models:
        m.eval().to(device=device, memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m, (training, channels_last) in zip(models, was):
            m.train(training)
            if not channels_last:
                m.to(memory_format=torch.contiguous_format)
