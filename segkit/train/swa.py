"""Weight averaging of the last K epochs (stochastic weight averaging), with BatchNorm re-estimated.

    average = EpochAverage(model, first_epoch=epochs - K + 1)
    after each epoch: average.update(validated_model, epoch)   (a no-op before first_epoch)
    at the end:       recompute_batchnorm(average.module, windows); validate and save average.module

Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization" (UAI 2018),
on torch.optim.swa_utils: AveragedModel keeps the equal-weight running mean of the parameters
(the mean of the K epoch-end weights, the same as segkit.runs.checkpoint.average_state_dicts over
their checkpoints), and ``update_bn`` recomputes the BatchNorm running statistics, which an
average of weights does not have (averaged statistics belong to none of the averaged models).
Validation scores swing from epoch to epoch on small data; the average of the last epochs is
one model that sits between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from segkit.runs.checkpoint import save_checkpoint
from segkit.train.stage import sync_buffers


class EpochAverage:
    """Equal-weight mean of a model's weights at the end of epochs >= ``first_epoch``.

    The weights averaged are those the run validates (the EMA's when train.ema is on); buffers are
    copied from the last epoch and replaced by recompute_batchnorm before use. state_dict() /
    load_state_dict() carry the running mean and its count through checkpoints (exact resume).
    """

    def __init__(self, model: nn.Module, first_epoch: int):
        self.first_epoch = int(first_epoch)
        self.averaged = AveragedModel(model, use_buffers=False)  # default avg_fn: the running mean
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def count(self) -> int:
        """Epochs averaged so far."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> bool:
        """Add ``model``'s weights when ``epoch`` is inside the averaging window; True if added."""
        if int(epoch) < self.first_epoch:
            return False
        self.averaged.update_parameters(model)
        return True

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "n_averaged": self.averaged.n_averaged.clone(),
                "first_epoch": self.first_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.averaged.n_averaged.copy_(state["n_averaged"])


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: Iterable[torch.Tensor], device: torch.device) -> None:
    """BatchNorm running statistics of ``model`` recomputed from batches of training images (NCHW).

    torch.optim.swa_utils.update_bn: the statistics are reset and accumulated as a plain mean over
    all the batches (momentum None), then the model is put back in its previous mode.
    """
    update_bn((x.to(device).float() for x in images), model, device=device)


def dataset_images(dataset, batch_size: int, windows: int):
    """Batches (NCHW) of the first ``windows`` items' images of a training dataset (its current epoch)."""
    count = min(int(windows), len(dataset))
    for start in range(0, count, int(batch_size)):
        yield torch.stack([dataset[i]["image"] for i in range(start, min(count, start + int(batch_size)))])


def finish_average(average: EpochAverage, dataset, path: Path, *, evaluate: Callable[[nn.Module], dict],
                   batch_size: int, device: torch.device, windows: int = 64, epoch: int = 0,
                   save: bool = True) -> Optional[dict]:
    """BatchNorm of the average from ``windows`` training windows, its scores (``evaluate``), and
    ``path`` (checkpoints/swa.pt: {"model", "epoch", "swa", "metrics"}; `infer --epochs swa` loads it;
    written only when ``save``: rank 0 under torchrun).

    Under torchrun every rank calls it (``evaluate`` shares the validation rows between them): the
    statistics are recomputed on each rank's own windows, then rank 0's are broadcast so that every
    rank evaluates, and rank 0 saves, the same model.

    Returns {"epochs": [first, last], "count", **scores}, or None when no epoch was averaged (a run
    stopped early before the window).
    """
    # why: keyword options of the SWA finish (BatchNorm windows, validation, checkpointing), passed by the stage.
    if average.count == 0:
        return None
    recompute_batchnorm(average.module, dataset_images(dataset, batch_size, windows), device)
    sync_buffers(average.module)
    scores = evaluate(average.module)
    result = {"epochs": [average.first_epoch, average.first_epoch + average.count - 1], "count": average.count,
              **scores}
    if save:
        save_checkpoint(path, {"model": average.module.state_dict(), "epoch": int(epoch), "swa": result,
                               "metrics": scores})
    return result
