"""fit(config): one training stage from a Config to a finished run directory.

This and cli.py are the only places that unpack a Config; everything they call takes
explicit arguments. A stage is `train` (fresh weights) or `finetune` (weights and
preprocessing from a parent run, same field of view, new network size).

Exact resume: every item of an epoch (window, augmentation) is a pure function of
(seed, epoch, rank, index), and a checkpoint holds the weights, optimizer, scheduler, scaler,
EMA, early-stopping state, best score and RNG states, so `--resume` continues where the
uninterrupted run would have been. Under torchrun every rank trains on its own windows;
only rank 0 writes the run directory and validates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from segkit.data.dataset import RandomWindowDataset
from segkit.data.inputs import (
    TrainingData,
    compute_preprocess,
    create_train_augment,
    open_training_data,
)
from segkit.data.preprocess import Preprocess
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.models.factory import check_input_size, create_model, freeze_encoder
from segkit.models.losses import create_loss
from segkit.runs import checkpoint as ckpt
from segkit.runs import distributed
from segkit.runs.device import make_scaler, pick_device, seed_everything
from segkit.runs.plots import plot_metrics
from segkit.runs.rundir import (
    append_jsonl,
    check_resumable,
    create_run_dir,
    mark_running,
    read_run_info,
    save_config,
    truncate_jsonl,
    update_run_info,
)
from segkit.train import stage as st
from segkit.train.ema import ModelEma
from segkit.train.loop import EarlyStopping, train_one_epoch
from segkit.train.optim import create_optimizer, create_scheduler
from segkit.train.validate import validate

BEST_METRIC = "val_dice"


def _log(message: str) -> None:
    if distributed.is_main():
        print(message, flush=True)


def build_model(config: Config, in_channels: int) -> torch.nn.Module:
    """The stage's network from a fixed seed (every rank builds the same one), size-checked."""
    seed_everything(config.run.seed)
    model = create_model(config.model.arch, config.model.encoder, config.model.encoder_weights,
                         in_channels=in_channels, classes=config.model.classes, task=config.task)
    check_input_size(model, config.data.size)
    return model


def fit(
    config: Config,
    *,
    command: str = "train",
    parent: Optional[Path] = None,
    resume: Optional[Path] = None,
    parent_epoch: str | int = "best",
) -> Path:
    """Train one stage and return its run directory (new, or `resume` continued).

    Under torchrun (WORLD_SIZE > 1) this joins the process group, trains with DDP and leaves it.
    """
    info = distributed.setup(config.run.device, timeout_s=1800)
    try:
        return _fit(config, command, parent, resume, parent_epoch, info)
    finally:
        distributed.cleanup()


def _setup_run(config, command, parent, resume, parent_epoch, data: TrainingData):
    """Rank 0: the run directory (created, or checked for resume) and its preprocess.json."""
    if resume is not None:
        mark_running(resume)
        return resume
    extra = {}
    if parent is not None:
        path, epoch = st.select_checkpoint(parent, parent_epoch)
        extra = {"parent_epoch": epoch, "parent_checkpoint": path.name, "lineage": st.lineage(parent, epoch)}
        preprocess = Preprocess.load(parent / "preprocess.json")
    else:
        preprocess = compute_preprocess(config, data, config.run.seed)
    build_model(config, preprocess.in_channels)  # a bad --size fails here, before anything is written
    run_dir = create_run_dir(Path(config.run.runs_dir), config.run.name, command)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, name=run_dir.name))
    save_config(config, run_dir / "config.yaml")
    preprocess.save(run_dir / "preprocess.json")
    mark_running(run_dir, command=command, task=config.task, parent=str(parent) if parent else None,
                 created=time.time(), in_channels=preprocess.in_channels, best_epoch=None, **extra)
    return run_dir


def _fit(config, command, parent, resume, parent_epoch, dist_info) -> Path:
    main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    if resume is not None:
        run_info = check_resumable(resume, check_live=main)  # only rank 0: it marks the run live itself
        config = load_config(resume / "config.yaml")
        command, parent = run_info["command"], (Path(run_info["parent"]) if run_info.get("parent") else None)
    if config.task == "cls":
        raise SegkitError("task cls: classification training is not built yet; this version trains task seg")
    if config.run.log == "tensorboard":
        st.require_tensorboard()
    if config.data.fov_px is None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, fov_px=config.data.size))
    if parent is not None and resume is None:
        st.check_parent_compatible(parent, config)

    data = open_training_data(config)
    train_pairs, val_pairs, sampler = data.train_pairs, data.val_pairs, data.sampler

    # Rank 0 names and creates the run directory; the others learn it (or rank 0's error) from it.
    outcome, failure = None, None
    if main:
        try:
            outcome = ("ok", str(_setup_run(config, command, parent, resume, parent_epoch, data)))
        except Exception as exc:  # tell the other ranks instead of leaving them waiting
            outcome, failure = ("error", str(exc)), exc
    outcome = st.broadcast(outcome)
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        raise SegkitError(outcome[1])
    run_dir = Path(outcome[1])
    config = load_config(run_dir / "config.yaml")
    run_info = read_run_info(run_dir)
    preprocess = Preprocess.load(run_dir / "preprocess.json")
    device = dist_info.device if world > 1 else pick_device(config.run.device)
    where = f" on {world} ranks ({dist_info.backend})" if world > 1 else ""
    _log(f"run {run_dir}  ({command}, fov {config.data.fov_px} px -> size {config.data.size} px){where}")

    model = build_model(config, preprocess.in_channels)
    if parent is not None and (resume is None or not ckpt.list_checkpoints(run_dir / "checkpoints")):
        # a finetune starts from its parent's weights (also when it was killed before its first checkpoint)
        path = parent / "checkpoints" / run_info["parent_checkpoint"]
        st.load_model_weights(model, ckpt.load_checkpoint(path, required_keys=("model",))["model"], path)
    if config.model.freeze_fraction > 0:
        freeze_encoder(model, config.model.freeze_fraction)
    model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, config.train.ema) if config.train.ema else None
    ddp_model = distributed.wrap_ddp(model, device)

    # Windows per epoch are split across ranks; each rank draws its own (dataset rank = dist rank).
    total = max(config.train.batch_size, int(config.train.windows_per_epoch * config.train.subset))
    length = max(config.train.batch_size, total // world)
    augment = create_train_augment(config, data, preprocess, config.run.seed)
    dataset = RandomWindowDataset(
        train_pairs, sampler, size=config.data.size, length=length, preprocess=preprocess,
        augment=augment, seed=config.run.seed, rank=rank,
    )
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, drop_last=True,
                        num_workers=config.data.workers)
    steps_per_epoch = math.ceil(len(loader) / config.train.accumulate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(config.train.optimizer, trainable, lr=config.train.lr,
                                 weight_decay=config.train.weight_decay, momentum=config.train.momentum)
    scheduler = create_scheduler(config.train.scheduler, optimizer, total_steps=steps_per_epoch * config.train.epochs,
                                 warmup_steps=config.train.warmup_steps, min_lr_ratio=config.train.min_lr_ratio)
    loss_fn = create_loss(config.train.loss, classes=config.model.classes, task=config.task)
    amp = config.train.amp
    scaler = make_scaler(device, amp)
    early = EarlyStopping(config.train.early_stop or None, mode="max", min_delta=config.train.early_stop_delta)

    start_epoch, best = 1, None
    checkpoint_dir = run_dir / "checkpoints"
    if resume is not None:
        existing = ckpt.list_checkpoints(checkpoint_dir)
        done = 0
        if existing:
            state = ckpt.load_checkpoint(existing[-1], required_keys=("model", "optimizer", "scheduler", "rng", "epoch"))
            done = st.restore_training_state(state, model, optimizer, scheduler, scaler, ema, early)
            best = state.get("best")
            if rank:  # per-item seeding makes the torch RNG irrelevant to the data; keep ranks distinct
                torch.manual_seed(config.run.seed + 1000 * done + rank)
        start_epoch = done + 1
        if main:
            truncate_jsonl(run_dir / "metrics.jsonl", done)
        _log(f"resuming {run_dir} after epoch {done}")

    val_settings = dict(
        fov_px=config.data.fov_px, size=config.data.size,
        overlap_px=min(config.infer.overlap_px, config.data.fov_px // 2),
        tta=config.infer.tta, blend=config.infer.blend, threshold=config.infer.threshold,
        batch_size=config.infer.batch_size, device=device, amp=amp,
        activation=activation_for(config.model.classes), classes=config.model.classes,
    )
    board = st.TensorBoardLog(run_dir / "tensorboard") if main and config.run.log == "tensorboard" else None
    started_run, epoch, record = time.time(), start_epoch - 1, {}
    try:
        for epoch in range(start_epoch, config.train.epochs + 1):
            dataset.set_epoch(epoch)
            started, started_cpu = time.time(), time.process_time()
            stats = train_one_epoch(
                ddp_model, loader, loss_fn, optimizer, scheduler=scheduler, device=device, amp=amp, scaler=scaler,
                accumulate=config.train.accumulate, clip=config.train.clip, channels_last=config.train.channels_last,
                ema=ema, progress=config.run.progress and main, desc=f"epoch {epoch}/{config.train.epochs}",
                step_offset=(epoch - 1) * steps_per_epoch,
            )
            st.sync_buffers(model, ema.module if ema is not None else None)
            record = st.numeric({"epoch": epoch, "train_loss": stats["loss"], "terms": stats.get("terms"),
                                 "lr": stats["lr"]})
            if main and val_pairs:  # the other ranks wait in the broadcast below
                evaluated = ema.module if ema is not None else model
                record[BEST_METRIC] = validate([(evaluated, 1.0)], val_pairs, preprocess, **val_settings)["dice"]
                model.train()
            record["seconds"] = round(time.time() - started, 2)
            record["cpu_seconds"] = round(time.process_time() - started_cpu, 2)  # less sensitive to other load
            record = st.broadcast(record)
            stop = early.step(record[BEST_METRIC]) if BEST_METRIC in record else False
            if BEST_METRIC in record and early.improved:
                best = {"epoch": epoch, "value": record[BEST_METRIC]}
            if main:
                _record_epoch(run_dir, record, best, board)
                state = st.training_state(epoch, model, optimizer, scheduler, scaler, ema, early, best, record)
                ckpt.save_checkpoint(checkpoint_dir / ckpt.checkpoint_name(epoch), state)
                keep = checkpoint_dir / ckpt.checkpoint_name(best["epoch"]) if best else None
                ckpt.prune_checkpoints(checkpoint_dir, config.train.keep_last, keep)
                update_run_info(run_dir, best_epoch=best["epoch"] if best else epoch, last_epoch=epoch)
            dice = f"  val dice {record[BEST_METRIC]:.4f}" if BEST_METRIC in record else ""
            _log(f"epoch {epoch}: loss {record['train_loss']:.4f}{dice}  ({record['seconds']} s)")
            distributed.barrier()
            if stop:
                _log(f"early stop: no improvement in {early.bad_epochs} epochs")
                break
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if main:
            update_run_info(run_dir, status=status, error=message)
        if isinstance(exc, SegkitError):  # e.g. a NaN loss: say which checkpoint is the last good one
            kept = ckpt.list_checkpoints(checkpoint_dir)
            where = f"last good checkpoint {kept[-1]}" if kept else "no checkpoint was written"
            raise SegkitError(f"{message.removesuffix('; last good checkpoint kept')} ({where}; run status {status})") from None
        raise
    finally:
        if board is not None:
            board.close()

    changes = {}
    if world > 1:  # DDP keeps replicas equal; check it rather than assume it
        digests = distributed.all_gather_objects(st.weights_digest(model))
        changes["ddp"] = {"world_size": world, "backend": dist_info.backend, "windows_per_rank": length,
                          "weights_identical": len(set(digests)) == 1, "weights_sha1": digests[0]}
        if len(set(digests)) != 1:
            _log(f"warning: ranks ended with different weights ({', '.join(d[:8] for d in digests)})")
    summary = _summary(run_dir, epoch, record, best, time.time() - started_run)
    if main:
        update_run_info(run_dir, status="finished", summary=summary, pid=None, **changes)
    _log(summary)
    return run_dir


def _record_epoch(run_dir: Path, record: dict, best, board) -> None:
    """metrics.jsonl before the checkpoint: a crash in between leaves a record that resume drops."""
    append_jsonl(run_dir / "metrics.jsonl", record)
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
    if board is not None:
        board.write(record)


def _summary(run_dir: Path, epoch: int, record: dict, best, seconds: float) -> str:
    loss = f"  final loss {record['train_loss']:.4f}" if "train_loss" in record else ""
    score = f"  best val dice {best['value']:.4f} at epoch {best['epoch']}" if best else "  (no validation rows)"
    return f"done: {run_dir}  {epoch} epochs{loss}{score}  ({seconds:.0f} s this session)"


def activation_for(classes: int) -> str:
    """Binary models end in a sigmoid, multiclass ones in a softmax over classes."""
    return "sigmoid" if classes == 1 else "softmax"
