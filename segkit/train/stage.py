"""Pieces of one training stage that fit() assembles: the built training objects (Parts), the
one checkpoint-state API for exact resume (training_state / restore_training_state)
and the cross-rank checks of a DDP run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from segkit.ground.errors import SegkitError
from segkit.runs import checkpoint as ckpt
from segkit.runs import distributed
from segkit.runs.plots import plot_metrics
from segkit.runs.rundir import append_jsonl

# --- the objects of a stage -----------------------------------------------------------------

@dataclass
class Parts:
    """What fit() builds for one stage and the epoch loop drives.

    model: the network; ddp_model: the same wrapped for DDP (model itself when not distributed);
    ema: the weight average (None when train.ema is off); early: early stopping (its state is
    checkpointed); steps_per_epoch: optimizer steps of one epoch (scheduler length);
    batch_transform: applied to every training batch (segkit.data.mixing.BatchMix) or None.
    """

    model: torch.nn.Module
    ddp_model: torch.nn.Module
    ema: Optional[object]
    dataset: object
    loader: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: Optional[object]
    loss_fn: object
    early: object
    steps_per_epoch: int
    batch_transform: Optional[object] = None  # MixUp/CutMix (cls): (x, y) -> (x, y) on each device batch
    swa: Optional[object] = None  # segkit.train.swa.EpochAverage of the last epochs (train.swa_epochs) or None


def load_model_weights(model: torch.nn.Module, state: dict, where: Path) -> None:
    try:
        distributed.unwrap(model).load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise SegkitError(f"{where}: weights do not fit this model ({first})") from None


# --- checkpoints ------------------------------------------------------------------------------

def training_state(parts: Parts, epoch: int, best, record) -> dict:
    """Everything exact resume needs. "model" holds the weights that were validated (the EMA's when
    train.ema is on: what infer and finetune use); "train_model" the raw weights the optimizer moves."""
    optimizer, scheduler, scaler, ema, early = parts.optimizer, parts.scheduler, parts.scaler, parts.ema, parts.early
    raw = distributed.unwrap(parts.model).state_dict()
    state = {
        "epoch": int(epoch),
        "model": ema.module.state_dict() if ema is not None else raw,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": ckpt.rng_state(),
        "early_stop": early.state_dict(),
        "best": best,
        "metrics": record,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if ema is not None:
        state["train_model"] = raw
        state["ema"] = {"n_averaged": ema.averaged.n_averaged.clone(), "decay": ema.decay}
    if parts.swa is not None:
        state["swa"] = parts.swa.state_dict()
    return state


def restore_training_state(state: dict, parts: Parts) -> int:
    """Load training_state() into freshly built objects; returns the checkpoint's epoch."""
    optimizer, scheduler, scaler, ema, early = parts.optimizer, parts.scheduler, parts.scaler, parts.ema, parts.early
    distributed.unwrap(parts.model).load_state_dict(state.get("train_model", state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if "ema" in state:
            ema.load_state_dict({"module": state["model"], "n_averaged": state["ema"]["n_averaged"]})
        else:  # checkpoint written without EMA: start the average from the current weights
            ema.module.load_state_dict(state["model"])
    if state.get("early_stop"):
        early.load_state_dict(state["early_stop"])
    if parts.swa is not None and "swa" in state:
        parts.swa.load_state_dict(state["swa"])
    ckpt.set_rng_state(state["rng"])
    return int(state["epoch"])


# --- checks -----------------------------------------------------------------------------------

def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter and buffer, in state-dict order (equal digests = equal weights)."""
    digest = hashlib.sha1()
    for key, value in distributed.unwrap(model).state_dict().items():
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sync_buffers(*modules) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP only broadcasts buffers at the start of a forward pass, so after the last batch each
    rank holds statistics updated by its own windows; this makes the replicas equal again.
    """
    if not distributed.is_distributed():
        return
    import torch.distributed as dist

    for module in modules:
        if module is None:
            continue
        for buffer in distributed.unwrap(module).buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself when not distributed)."""
    return distributed.all_gather_objects(obj)[0]


def numeric(record: dict) -> dict:
    """Flatten {"terms": {...}} into the record; keep plain numbers only."""
    out: dict = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({k: float(v) for k, v in value.items() if k != "loss"})
        elif value is not None:
            out[key] = value
    return out


def summary_line(run_dir: Path, epoch: int, record: dict, best, seconds: float) -> str:
    """The stage's last line: run, epochs, final loss, best score and this session's time."""
    loss = f"  final loss {record['train_loss']:.4f}" if "train_loss" in record else ""
    name = best.get("metric", "val_dice").replace("_", " ") if best else ""
    score = f"  best {name} {best['value']:.4f} at epoch {best['epoch']}" if best else "  (no validation rows)"
    return f"done: {run_dir}  {epoch} epochs{loss}{score}  ({seconds:.0f} s this session)"


def record_epoch(run_dir: Path, record: dict) -> None:
    """metrics.jsonl before the checkpoint: a crash in between leaves a record that resume drops. A run
    directory deleted meanwhile is not re-created by these writes (_fail names it)."""
    if not (run_dir / "run.json").is_file():
        raise SegkitError(f"{run_dir}: the run directory disappeared while training")
    append_jsonl(run_dir / "metrics.jsonl", record)
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
