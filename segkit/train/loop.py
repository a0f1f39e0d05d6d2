"""train_one_epoch: AMP, gradient accumulation, clipping, channels_last, EMA, DDP, progress.

Batches are dicts: {"image": NCHW float, "mask": NHW integer} for segmentation,
{"image": NCHW float, "target": N integer} for classification ((image, target) tuples work too),
or both "mask" and "target" for seg+cls, whose model returns (mask logits, class logits) and
whose loss takes (mask, target).
AMP means autocast in segkit.runs.device.amp_dtype: bf16 on GPUs that support it and on CPUs with
native bf16, fp16 with a GradScaler on older GPUs. Losses are computed in float32 on the
(autocast) logits.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.runs import distributed
from segkit.runs.device import autocast, make_scaler
from segkit.runs.progress import Progress


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` epochs.

    step(value) -> True when training should stop; ``improved`` tells whether the last value
    was a new best (save the best checkpoint then). state_dict() goes into checkpoints for resume.
    """

    def __init__(self, patience: int | None, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise SegkitError(f"early_stopping.mode: must be max or min, got {mode!r}")
        self.patience, self.mode, self.min_delta = patience, mode, float(min_delta)
        self.best: float | None = None
        self.bad_epochs = 0
        self.improved = False

    def step(self, value: float) -> bool:
        value = float(value)
        if self.best is None:
            self.improved = math.isfinite(value)
        elif self.mode == "max":
            self.improved = value > self.best + self.min_delta
        else:
            self.improved = value < self.best - self.min_delta
        if self.improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= int(self.patience)

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])


def _split(batch):
    if isinstance(batch, dict):
        if "mask" in batch and "target" in batch:  # seg+cls
            return batch["image"], (batch["mask"], batch["target"])
        y = batch["mask"] if "mask" in batch else batch["target"]
        return batch["image"], y
    return batch[0], batch[1]


def _apply(value, fn):
    """fn on a tensor, or on each tensor of a tuple (seg+cls outputs and targets)."""
    return tuple(fn(v) for v in value) if isinstance(value, (tuple, list)) else fn(value)


def _bar(loader, progress: bool, desc: str) -> Progress:
    """A bar on a terminal, plain lines every few seconds in logs (segkit.runs.progress)."""
    total = len(loader) if hasattr(loader, "__len__") else None
    return Progress(total, desc=desc, unit="batches", enabled=bool(progress))


def _optimizer_step(model, optimizer, scaler, clip, grad_scale: float) -> bool:
    """One optimizer step; False when the GradScaler skipped it (fp16 gradients not finite)."""
    if grad_scale != 1.0:  # a final, short accumulation group: make it a mean over its own batches
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, grad_scale)
    stepped = True
    if scaler is not None:
        if clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scale = scaler.get_scale()  # scaler.step reads found_inf on the host anyway: no extra stall
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale  # a skipped step backs the scale off
    else:
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped


class _LateCheck:
    """The running mean loss and non-finite flag of a step, read on the host one step later.

    Reading a device value right after queueing a step waits for the GPU to finish it and leaves it
    idle while the host prepares the next one. Here each step's [bad, loss sum] is copied to
    (pinned) host memory without blocking, and looked at after the next step is queued, when it is
    long done. A NaN therefore raises one optimizer step late; nothing is saved in between, so the
    last checkpoint stays the last good one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.pending = None  # (host values, CUDA event or None, step, batch)

    def push(self, values: torch.Tensor, step: int, batch: int) -> float | None:
        """Queue this step's [bad, running mean loss]; returns the previous step's running mean (None the first time)."""
        previous = self.check()
        if self.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = values.detach().to("cpu"), None
        self.pending = (host, event, step, batch)
        return previous

    def check(self) -> float | None:
        """Raise SegkitError if the pending step's loss was not finite; else its running mean (None if none)."""
        if self.pending is None:
            return None
        host, event, step, batch = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        bad, loss_mean = host.tolist()
        if bad:
            raise SegkitError(f"training: loss became NaN at step {step} (batch {batch}); last good checkpoint kept")
        return loss_mean


def train_one_epoch(model: nn.Module, loader, loss_fn, optimizer, *, scheduler=None, device, amp: bool = False,
                    accumulate: int = 1, clip: float | None = None, channels_last: bool = True, ema=None,
                    progress: bool = True, max_steps: int | None = None, scaler=None, desc: str = "train",
                    step_offset: int = 0, batch_transform=None) -> dict:
    """One pass over ``loader``; returns {"loss", "lr", "steps", "batches", "images", "seconds"}
    plus "terms" ({"loss_dice": .., "loss_bce": ..}) when the loss has several terms.

    ``accumulate`` batches make one optimizer step (the scheduler and ``ema`` follow optimizer
    steps; a step the fp16 GradScaler skips moves neither); ``max_steps`` caps optimizer steps (for
    --subset). ``loss`` is the image-weighted mean over batches, averaged over ranks under DDP. A
    non-finite loss on any rank raises SegkitError on every rank, at most one optimizer step later
    (_LateCheck: the host never waits on the device inside the epoch).
    ``step_offset`` only numbers steps in that message (global step of the first batch).
    ``batch_transform(x, y) -> (x, y)`` runs on the device batch (MixUp/CutMix of cls).

    .. versionchanged:: the loss and its NaN flag stay on the device between optimizer steps.
    """
    # why: one training loop read in a sitting (nanoGPT's style): its accumulators and the late NaN check are local
    # state; its options are keywords with defaults.
    device = torch.device(device)
    accumulate = max(1, int(accumulate))
    if scaler is None:
        scaler = make_scaler(device, amp)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    images, batches, steps, pending = 0, 0, 0, 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    bad = torch.zeros((), dtype=torch.float64, device=device)  # > 0: a loss of this group was not finite
    late = _LateCheck(device)
    terms: dict = {}
    start = time.perf_counter()
    try:
        n_batches = len(loader)
    except TypeError:
        n_batches = None
    bar = _bar(loader, progress, desc)
    for batch in bar.iterate(loader):
        x, y = _split(batch)
        x = x.to(device, non_blocking=True).float()
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = _apply(y, lambda t: t.to(device, non_blocking=True))
        if batch_transform is not None:
            x, y = batch_transform(x, y)
        pending += 1
        batches += 1
        last_in_group = pending == accumulate or (n_batches is not None and batches == n_batches)
        # skip DDP's gradient all-reduce inside a group; only when the loader has a length, since
        # otherwise a short final group would step on gradients that were never synchronised
        defer = is_ddp and not last_in_group and n_batches is not None
        sync = model.no_sync() if defer else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                logits = model(x)
            loss = loss_fn(_apply(logits, lambda t: t.float()), y)
            detached = loss.detach()
            bad += (~torch.isfinite(detached)).double()
            scaled = loss / accumulate
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += detached.double() * x.shape[0]
        images += x.shape[0]
        for name, part in getattr(loss_fn, "last", {}).items():  # per-term values, summed on device
            terms[name] = terms.get(name, 0.0) + part.detach().float() * x.shape[0]
        if last_in_group:
            steps += _finish_group(model, optimizer, scaler, clip, accumulate / pending, scheduler, ema)
            # the running mean is divided on the device, by the images of the same step: the bar shows it a step late
            previous = late.push(torch.stack([distributed.all_reduce_sum(bad), loss_sum / images]),
                                 step_offset + steps, batches)
            bad.zero_()
            pending = 0
            if previous is not None:
                bar.set_info(loss=f"{previous:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if max_steps is not None and steps >= max_steps:
                break
    if pending:  # iterable without len(): the last short group still steps
        steps += _finish_group(model, optimizer, scaler, clip, accumulate / pending, scheduler, ema)
        late.push(torch.stack([distributed.all_reduce_sum(bad), loss_sum / images]), step_offset + steps, batches)
    final = late.check()
    if final is not None:  # the closing line shows the epoch's mean loss
        bar.set_info(loss=f"{final:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    seconds = time.perf_counter() - start
    out = {"loss": float(loss_sum) / max(1, images), "lr": float(optimizer.param_groups[0]["lr"]), "steps": steps,
           "batches": batches, "images": images, "seconds": seconds}
    means = {"loss": out["loss"], **{f"loss_{k}": float(v) / max(1, images) for k, v in terms.items()}}
    means = distributed.all_reduce_mean(means)
    out["loss"] = means.pop("loss")
    if len(terms) > 1:  # a single term would only repeat "loss"
        out["terms"] = means
    return out


def _finish_group(model, optimizer, scaler, clip, grad_scale: float, scheduler, ema) -> int:
    """The optimizer step of an accumulation group, then the scheduler and the EMA (not after a step
    the GradScaler skipped: torch warns when the schedule moves without one). Returns 1 (steps counted)."""
    if _optimizer_step(model, optimizer, scaler, clip, grad_scale):
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
    return 1
