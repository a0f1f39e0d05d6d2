"""fit(config): one training stage from a Config to a finished run directory.

This and cli.py are the only places that unpack a Config; everything they call takes
explicit arguments. A stage is `train` (fresh weights) or `finetune` (weights and
preprocessing from a parent run, same field of view, new network size).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from segkit.config import Config, load_config, save_config
from segkit.data.augment import create_augment
from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.dataset import LabelOptions, RandomWindowDataset, open_pairs, sampling_area
from segkit.data.preprocess import Preprocess
from segkit.data.stats import channel_stats
from segkit.data.windows import RandomWindowSampler
from segkit.errors import SegkitError
from segkit.models.factory import create_model
from segkit.models.losses import create_loss
from segkit.report.plots import plot_metrics
from segkit.train import checkpoint as ckpt
from segkit.train.data_source import split_manifest
from segkit.train.loop import pick_device, train_one_epoch
from segkit.train.optim import create_optimizer, create_scheduler
from segkit.train.rundir import append_jsonl, create_run_dir, read_run_info, update_run_info
from segkit.train.validate import validate

BEST_METRIC = "val_dice"


def _log(message: str) -> None:
    print(message, flush=True)


def compute_preprocess(config: Config, pairs, sampler, seed: int) -> Preprocess:
    """Channel spec resolved on the first training image, then mean/std over sampled windows."""
    first = pairs[0].raster
    specs = parse_channels(config.data.channels, bands=first.channels, dtype=first.dtype)
    thumb, _ = first.thumbnail(1024)
    preprocess = Preprocess(resolve_channels(specs, thumb))
    if not config.data.normalize:
        return preprocess
    dataset = RandomWindowDataset(
        pairs, sampler, size=config.data.size, length=config.data.stats_windows, preprocess=preprocess, seed=seed + 1
    )
    mean, std = channel_stats(preprocess(dataset.read(i)[0]) for i in range(len(dataset)))
    return preprocess.with_stats(list(map(float, mean)), list(map(float, std)))


def fit(
    config: Config,
    *,
    command: str = "train",
    parent: Optional[Path] = None,
    resume: Optional[Path] = None,
) -> Path:
    """Train one stage and return its run directory (new, or `resume` continued)."""
    if config.task == "cls":
        raise SegkitError("task cls: classification training is not built yet; this version trains task seg")
    runs_dir = Path(config.run.runs_dir)
    if resume is not None:
        run_dir = resume
        info = read_run_info(run_dir)
        if info.get("status") == "finished":
            raise SegkitError(f"{run_dir}: run has finished; nothing to resume (finetune it instead)")
        config = load_config(run_dir / "config.yaml")
        command, parent = info["command"], (Path(info["parent"]) if info.get("parent") else None)
    if config.data.fov_px is None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, fov_px=config.data.size))

    train_rows, val_rows = split_manifest(config)
    options = LabelOptions(config.data.rle_order, config.data.class_map, config.data.class_property, config.data.pad_mode)
    train_pairs = open_pairs(train_rows, options)
    val_pairs = open_pairs(val_rows, options)
    areas = [sampling_area(pair, config.data.tissue) for pair in train_pairs]
    sampler = RandomWindowSampler(areas, config.data.fov_px, foreground_share=config.data.foreground_share)

    if resume is None:
        run_dir = create_run_dir(runs_dir, config.run.name, command)
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, name=run_dir.name))
        save_config(config, run_dir / "config.yaml")
        if parent is not None:
            preprocess = Preprocess.load(parent / "preprocess.json")
        else:
            preprocess = compute_preprocess(config, train_pairs, sampler, config.run.seed)
        preprocess.save(run_dir / "preprocess.json")
        update_run_info(
            run_dir,
            command=command,
            task=config.task,
            parent=str(parent) if parent else None,
            created=time.time(),
            status="running",
            in_channels=preprocess.in_channels,
            best_epoch=None,
        )
    preprocess = Preprocess.load(run_dir / "preprocess.json")
    _log(f"run {run_dir}  ({command}, fov {config.data.fov_px} px -> size {config.data.size} px)")

    device = pick_device(config.run.device)
    torch.manual_seed(config.run.seed)
    model = create_model(
        config.model.arch,
        config.model.encoder,
        config.model.encoder_weights,
        in_channels=preprocess.in_channels,
        classes=config.model.classes,
        task=config.task,
    )
    if parent is not None and resume is None:
        model.load_state_dict(load_weights(parent, "best"))
    if config.model.freeze_fraction > 0:
        from segkit.models.factory import freeze_encoder

        freeze_encoder(model, config.model.freeze_fraction)
    model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)

    length = max(config.train.batch_size, int(config.train.windows_per_epoch * config.train.subset))
    augment = create_augment(config.data.augment)
    dataset = RandomWindowDataset(
        train_pairs, sampler, size=config.data.size, length=length, preprocess=preprocess,
        augment=augment, seed=config.run.seed,
    )
    loader = DataLoader(
        dataset, batch_size=config.train.batch_size, shuffle=False, drop_last=True, num_workers=config.data.workers
    )
    steps_per_epoch = math.ceil(len(loader) / config.train.accumulate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(config.train.optimizer, trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    scheduler = create_scheduler(
        config.train.scheduler, optimizer, total_steps=steps_per_epoch * config.train.epochs,
        warmup_steps=config.train.warmup_steps,
    )
    loss_fn = create_loss(config.train.loss, classes=config.model.classes, task=config.task)
    amp = config.train.amp
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None

    start_epoch, best = 1, None
    checkpoint_dir = run_dir / "checkpoints"
    if resume is not None:
        existing = ckpt.list_checkpoints(checkpoint_dir)
        if existing:
            state = ckpt.load_checkpoint(existing[-1])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            ckpt.set_rng_state(state["rng"])
            start_epoch = int(state["epoch"]) + 1
            best = state.get("best")
            _log(f"resuming {run_dir} after epoch {start_epoch - 1}")

    val_settings = dict(
        fov_px=config.data.fov_px, size=config.data.size, overlap_px=min(config.infer.overlap_px, config.data.fov_px // 2),
        tta=config.infer.tta, blend=config.infer.blend, threshold=config.infer.threshold,
        batch_size=config.infer.batch_size, device=device, amp=amp,
        activation=activation_for(config.model.classes), classes=config.model.classes,
    )
    stale = 0
    for epoch in range(start_epoch, config.train.epochs + 1):
        dataset.set_epoch(epoch)
        started = time.time()
        stats = train_one_epoch(
            model, loader, loss_fn, optimizer, scheduler=scheduler, device=device, amp=amp, scaler=scaler,
            accumulate=config.train.accumulate, clip=config.train.clip, channels_last=config.train.channels_last,
            progress=config.run.progress, desc=f"epoch {epoch}/{config.train.epochs}",
        )
        record = {"epoch": epoch, "train_loss": stats["loss"], "lr": stats["lr"]}
        if val_pairs:
            scores = validate([(model, 1.0)], val_pairs, preprocess, **val_settings)
            record[BEST_METRIC] = scores["dice"]
        record["seconds"] = round(time.time() - started, 2)
        improved = BEST_METRIC in record and (best is None or record[BEST_METRIC] > best["value"])
        if improved:
            best = {"epoch": epoch, "value": record[BEST_METRIC]}
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "metrics": record,
            "best": best,
            "rng": ckpt.rng_state(),
        }
        path = checkpoint_dir / f"epoch_{epoch:04d}.pt"
        ckpt.save_checkpoint(path, state)
        keep = {checkpoint_dir / f"epoch_{best['epoch']:04d}.pt"} if best else set()
        ckpt.prune_checkpoints(checkpoint_dir, config.train.keep_last, keep)
        append_jsonl(run_dir / "metrics.jsonl", record)
        update_run_info(run_dir, best_epoch=best["epoch"] if best else epoch, last_epoch=epoch)
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "plots")
        dice = f"  val dice {record[BEST_METRIC]:.4f}" if BEST_METRIC in record else ""
        _log(f"epoch {epoch}: loss {stats['loss']:.4f}{dice}  ({record['seconds']} s)")
        stale = 0 if improved else stale + 1
        if config.train.early_stop and stale >= config.train.early_stop:
            _log(f"early stop: no improvement in {stale} epochs")
            break

    info = update_run_info(run_dir, status="finished")
    if best:
        _log(f"done: {run_dir}  best val dice {best['value']:.4f} at epoch {best['epoch']}")
    else:
        _log(f"done: {run_dir}  (no validation rows; last epoch {info['last_epoch']})")
    return run_dir


def activation_for(classes: int) -> str:
    """Binary models end in a sigmoid, multiclass ones in a softmax over classes."""
    return "sigmoid" if classes == 1 else "softmax"


def load_weights(run_dir: Path, which: str = "best") -> dict:
    """Model weights of a run's best (or last) checkpoint."""
    info = read_run_info(run_dir)
    paths = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not paths:
        raise SegkitError(f"{run_dir}: no checkpoints")
    chosen = paths[-1]
    if which == "best" and info.get("best_epoch") is not None:
        named = run_dir / "checkpoints" / f"epoch_{info['best_epoch']:04d}.pt"
        chosen = named if named.exists() else chosen
    return ckpt.load_checkpoint(chosen)["model"]
