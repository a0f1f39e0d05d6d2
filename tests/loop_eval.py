"""Tile-level evaluation over a loader of batches: a reference the tests hold training against.

It lived in segkit.train.loop, but nothing in segkit calls it (validation predicts whole images
with the tiled predictor, segkit.train.validate), so it is kept with the tests that use it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from segkit.metrics.cls import ConfusionAccumulator
from segkit.metrics.seg import DiceAccumulator
from segkit.runs import distributed
from segkit.runs.device import autocast
from segkit.train.loop import _bar, _split


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn=None, *, device,
             amp: bool = False, task: str = "seg",
             classes: int = 1, threshold: float = 0.5, channels_last: bool = True, progress: bool = False,
             max_batches: int | None = None, desc: str = "val") -> dict:
    """Tile-level validation over a loader of batches (not the stitched whole-image predictor).

    seg: {"loss", "dice" (mean per image), "dice_global", "iou", "dice_per_class": list};
    cls: {"loss", "accuracy", "f1" (macro)}. Under DDP the counts are gathered from every rank.
    Binary outputs use sigmoid > ``threshold``; several classes use argmax.
    """
    device = torch.device(device)
    model.eval()
    acc = DiceAccumulator(classes) if task == "seg" else ConfusionAccumulator(classes)
    loss_sum, images = 0.0, 0
    bar = _bar(loader, progress, desc)
    for i, batch in enumerate(bar.iterate(loader)):
        if max_batches is not None and i >= max_batches:
            break
        x, y = _split(batch)
        x = x.to(device).float()
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y)) * x.shape[0]
        images += x.shape[0]
        if classes == 1:
            pred = (torch.sigmoid(logits[:, 0]) > threshold).long()
        else:
            pred = logits.argmax(1)
        target = y[:, 0] if (y.dim() == logits.dim() and task == "seg") else y
        if task == "cls" and target.dim() > 1:
            target = target.reshape(-1)
        acc.update(pred, target.long())
    out = {"loss": distributed.all_reduce_mean({"loss": loss_sum / max(1, images)})["loss"]}
    if task == "seg":
        if distributed.is_distributed():
            merged = DiceAccumulator(classes)
            for counts in distributed.all_gather_objects(acc.counts()):
                merged.add_counts(counts)
            acc = merged
        out.update(dice=acc.mean(), dice_global=acc.global_dice(), iou=acc.iou_mean(),
                   dice_per_class=[float(v) for v in acc.per_class()])
    else:
        if distributed.is_distributed():
            acc.matrix = np.sum(distributed.all_gather_objects(acc.matrix), axis=0)
        out.update(accuracy=acc.accuracy(), f1=acc.macro_f1())
    return out
