"""Exponential moving average of model weights, on torch's AveragedModel.

    ema = ModelEma(model, decay=0.999)
    ... after each optimizer step: ema.update(model)
    evaluate / save ema.module (a plain copy of the model holding the averaged weights)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ModelEma:
    """EMA of parameters and buffers (use_buffers: BatchNorm statistics follow the average too).

    The first update copies the weights; later ones do ema = decay * ema + (1 - decay) * w.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.averaged = AveragedModel(_unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                      use_buffers=True)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (same class as the wrapped one); its state_dict loads into a fresh model."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(_unwrap(model))

    def state_dict(self) -> dict:
        """Averaged weights and the update count, for checkpoints (weights_only-loadable)."""
        return {"module": self.module.state_dict(), "n_averaged": self.averaged.n_averaged.clone(),
                "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.averaged.n_averaged.copy_(state["n_averaged"])
