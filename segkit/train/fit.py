"""fit(config): one training stage from a Config to a finished run directory.

The training stage entry (a composition root, with segkit.train.from_config): it unpacks the
Config; everything it calls takes explicit arguments. A stage is `train` (fresh weights) or
`finetune` (weights and preprocessing from a parent run, same field of view, new network size).
It reads as four steps: open the run (_open_run), build the training objects (_build), restore
them when resuming (_restore), run the epochs (_run_epochs).

Exact resume: every item of an epoch (window, augmentation) is a pure function of
(seed, epoch, rank, index), and a checkpoint holds the weights, optimizer, scheduler, scaler,
EMA, early-stopping state, best score and RNG states, so `--resume` continues where the
uninterrupted run would have been. Under torchrun every rank trains on its own windows and
validates its share of the validation rows; only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from segkit.data.inputs import TrainingData
from segkit.data.preprocess import Preprocess
from segkit.ground.config import Config, flatten_config, load_config, to_dict
from segkit.ground.errors import SegkitError
from segkit.models.factory import freeze_encoder
from segkit.runs import checkpoint as ckpt
from segkit.runs import distributed
from segkit.runs.device import make_scaler, pick_device
from segkit.runs.lock import lock_run, release_all
from segkit.train.hardware import choose_hardware, loader_for
from segkit.runs.plots import plot_confusion
from segkit.runs.rundir import (
    check_resumable,
    create_run_dir,
    mark_running,
    read_run_info,
    remove_stale_run_temps,
    save_config,
    truncate_jsonl,
    update_run_info,
)
from segkit.train import from_config as fc
from segkit.train import preflight
from segkit.train import stage as st
from segkit.train.ema import ModelEma
from segkit.train.swa import EpochAverage, finish_average
from segkit.train.loop import EarlyStopping, train_one_epoch
from segkit.train.optim import create_optimizer, create_scheduler, short_run_lr
from segkit.train.tracking import check_tracking, create_tracker, default_tracking_uri
from segkit.train.validate import validate

# Called on rank 0 after every epoch with (run directory, the epoch's record); may raise to stop
# (StopRun ends the run cleanly with its status, any other exception fails it).
EpochHook = Callable[[Path, dict], None]


class StopRun(Exception):
    """Raised by an EpochHook to end the run after this epoch with `status` (e.g. "pruned" by a search)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def _log(message: str) -> None:
    if distributed.is_main():
        print(message, flush=True)


def fit(
    config: Config,
    *,
    command: str = "train",
    parent: Optional[Path] = None,
    resume: Optional[Path] = None,
    parent_epoch: str | int = "best",
    hooks: Sequence[EpochHook] = (),
) -> Path:
    """Train one stage and return its run directory (new, or `resume` continued).

    command: "train" or "finetune" (recorded in run.json); parent: the run a finetune starts
    from, parent_epoch: which of its checkpoints (best, last or N); resume: a run directory to
    continue (its own config is used); hooks: EpochHook callables (tracking, search pruning).
    Under torchrun (WORLD_SIZE > 1) this joins the process group, trains with DDP and leaves it.
    """
    info = distributed.setup(config.run.device, timeout_s=config.run.dist_timeout_s)
    try:
        return _fit(config, command, parent, resume, parent_epoch, info, hooks)
    finally:
        release_all()  # the run directory's lock (rank 0), whatever the outcome
        distributed.cleanup()


def _fit(config, command, parent, resume, parent_epoch, dist_info, hooks) -> Path:
    # why: the stage read top to bottom: open, build, restore, train, finish; its pieces are functions, this is
    # their order.
    main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    if main and resume is not None and Path(resume).is_dir():  # one process per run: a second resume fails here
        lock_run(resume)
    if main:  # what a killed stage left half-written
        remove_stale_run_temps(Path(resume).parent if resume is not None else Path(config.run.runs_dir), resume)
    if resume is not None:
        run_info = check_resumable(resume, check_live=main)  # only rank 0: it marks the run live itself
        config = load_config(resume / "config.yaml")
        command, parent = run_info["command"], (Path(run_info["parent"]) if run_info.get("parent") else None)
    tracking_uri = config.run.tracking_uri or default_tracking_uri(Path(config.run.runs_dir))
    if main:  # a tracker that cannot work (package missing, store unreachable) fails before any data is read
        if config.run.log == "mlflow" and config.run.tracking_uri is None:
            Path(config.run.runs_dir).mkdir(parents=True, exist_ok=True)  # the default store lives there
        check_tracking(config.run.log, tracking_uri=tracking_uri, experiment=config.run.experiment,
                       runs_dir=Path(config.run.runs_dir))
    config = fc.with_fov(config)
    if parent is not None and resume is None:
        fc.check_parent_compatible(parent, config)

    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    if parent is not None and resume is None:
        fc.check_parent_compatible(parent, config)  # again, with the classes resolved from the data
    preflight.check_names(config)  # before the run directory exists
    run_dir = _open_run(config, command, parent, resume, parent_epoch, data)
    config = load_config(run_dir / "config.yaml")
    preprocess = Preprocess.load(run_dir / "preprocess.json")
    device = dist_info.device if world > 1 else pick_device(config.run.device)
    where = f" on {world} ranks ({dist_info.backend})" if world > 1 else ""
    _log(f"run {run_dir}  ({command}, fov {config.data.fov_px} px -> size {config.data.size} px){where}")
    hardware = choose_hardware(config, device, world)
    _log("hardware: " + ", ".join(f"{k} {v}" for k, v in hardware.items()))
    if main:
        update_run_info(run_dir, hardware=hardware)

    parent_weights = None
    if parent is not None and (resume is None or not ckpt.list_checkpoints(run_dir / "checkpoints")):
        # a finetune starts from its parent's weights (also when it was killed before its first checkpoint)
        parent_weights = parent / "checkpoints" / read_run_info(run_dir)["parent_checkpoint"]
    try:  # a stage that fails before its first epoch (e.g. a bad checkpoint to resume) does not stay "running"
        parts = _build(config, data, preprocess, device, parent_weights, world, rank)
        start_epoch, best = _restore(parts, run_dir, resume is not None, config.run.seed, rank)
        started = time.time()
        tracker = _open_tracker(config, run_dir, command, parent, tracking_uri) if main else None
    except BaseException as exc:
        if main:
            update_run_info(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                            pid=None, error=(str(exc).splitlines() or [type(exc).__name__])[0])
        raise
    try:
        epoch, record, best, outcome = _run_epochs(config, parts, run_dir, data, preprocess, device, start_epoch,
                                                   best, [*hooks, tracker] if tracker else hooks)
        if parts.swa is not None and outcome == "finished":  # every rank: validation is shared
            _finish_average(config, parts, run_dir, data, preprocess, device, epoch)
    except BaseException:
        if tracker is not None:
            tracker.finish(read_run_info(run_dir).get("status", "failed"))
        raise

    changes = {}
    if world > 1:  # DDP keeps replicas equal; check it rather than assume it
        digests = distributed.all_gather_objects(st.weights_digest(parts.model))
        changes["ddp"] = {"world_size": world, "backend": dist_info.backend, "windows_per_rank": len(parts.dataset),
                          "weights_identical": len(set(digests)) == 1, "weights_sha1": digests[0]}
        if len(set(digests)) != 1:
            _log(f"warning: ranks ended with different weights ({', '.join(d[:8] for d in digests)})")
    summary = st.summary_line(run_dir, epoch, record, best, time.time() - started)
    if main:
        update_run_info(run_dir, status=outcome, summary=summary, pid=None, **changes)
        if tracker is not None:
            tracker.finish(outcome, run_dir / "checkpoints" / ckpt.checkpoint_name(best["epoch"]) if best else None)
    _log(summary)
    return run_dir


def _open_tracker(config: Config, run_dir: Path, command: str, parent: Optional[Path], tracking_uri: str):
    """The --log tracker of this run (None for none); a resumed run continues its tracker run."""
    info = read_run_info(run_dir)
    tracker = create_tracker(config.run.log, run_dir, tracking_uri=tracking_uri, experiment=config.run.experiment,
                             params=flatten_config(to_dict(config)), run_id=info.get("tracking_run_id"),
                             tags={"command": command, "parent": parent.name if parent else ""})
    if tracker is not None and tracker.run_id and tracker.run_id != info.get("tracking_run_id"):
        update_run_info(run_dir, tracking_run_id=tracker.run_id)
    return tracker


def _open_run(config: Config, command: str, parent, resume, parent_epoch, data: TrainingData) -> Path:
    """Rank 0 names and creates (or reopens) the run directory; the other ranks learn it from rank 0."""
    outcome, failure = None, None
    if distributed.is_main():
        try:
            outcome = ("ok", str(_setup_run(config, command, parent, resume, parent_epoch, data)))
        except Exception as exc:  # tell the other ranks instead of leaving them waiting
            outcome, failure = ("error", str(exc)), exc
    outcome = st.broadcast(outcome)
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        raise SegkitError(outcome[1])
    return Path(outcome[1])


def _setup_run(config: Config, command: str, parent, resume, parent_epoch, data: TrainingData) -> Path:
    """Rank 0: the run directory (created, or checked for resume) and its preprocess.json."""
    if resume is not None:
        preflight.check_resume_checkpoint(resume)  # before run.json says "running"
        mark_running(resume)
        return resume
    extra = {}
    if parent is not None:
        path, epoch = ckpt.select_checkpoint(parent, parent_epoch)
        extra = {"parent_epoch": epoch, "parent_checkpoint": path.name, "lineage": fc.lineage(parent, epoch)}
        preprocess = Preprocess.load(parent / "preprocess.json")
    else:
        preprocess = fc.preprocess_for(config, data)
    model = fc.build_model(config, preprocess.in_channels)  # a bad --size fails here, before anything is written
    if parent is not None:
        preflight.check_parent_weights(model, path)
    run_dir = create_run_dir(Path(config.run.runs_dir), config.run.name, command)
    lock_run(run_dir)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, name=run_dir.name))
    save_config(config, run_dir / "config.yaml")
    preprocess.save(run_dir / "preprocess.json")
    mark_running(run_dir, command=command, task=config.task, parent=str(parent) if parent else None,
                 created=time.time(), in_channels=preprocess.in_channels, best_epoch=None, **extra)
    return run_dir


def _build(config: Config, data: TrainingData, preprocess: Preprocess, device: torch.device,
           parent_weights: Optional[Path], world: int, rank: int) -> st.Parts:
    """The model (from the parent's weights for a finetune), its EMA, data loader, optimizer,
    schedule, loss, scaler and early stopping of one stage, on ``device``."""
    t = config.train
    model = fc.build_model(config, preprocess.in_channels)
    if parent_weights is not None:
        st.load_model_weights(model, ckpt.load_checkpoint(parent_weights, required_keys=("model",))["model"],
                              parent_weights)
    if config.model.freeze_fraction > 0:
        freeze_encoder(model, config.model.freeze_fraction)
    model = _sync_batchnorm(model, t.sync_bn, world, device)
    model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, t.ema) if t.ema else None

    dataset = fc.train_dataset(config, data, preprocess, fc.augment_for(config, data, preprocess), rank=rank,
                               world=world)
    loader = loader_for(dataset, t.batch_size, config.data.workers, device)
    steps_per_epoch = math.ceil(len(loader) / t.accumulate)
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = short_run_lr(t.lr, steps_per_epoch * t.epochs, t.lr_full_steps)
    if lr != t.lr:
        _log(f"peak lr {lr:.2g} (train.lr {t.lr:g} scaled for a run of {steps_per_epoch * t.epochs} optimizer steps, "
             f"fewer than train.lr_full_steps {t.lr_full_steps})")
    optimizer = create_optimizer(t.optimizer, trainable, lr=lr, weight_decay=t.weight_decay, momentum=t.momentum)
    scheduler = create_scheduler(t.scheduler, optimizer, total_steps=steps_per_epoch * t.epochs,
                                 warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio)
    return st.Parts(
        model=model, ddp_model=distributed.wrap_ddp(model, device), ema=ema, dataset=dataset, loader=loader,
        optimizer=optimizer, scheduler=scheduler, scaler=make_scaler(device, t.amp),
        loss_fn=fc.task_loss(config).to(device),  # its class / pos weights are buffers: on the model's device
        early=EarlyStopping(t.early_stop or None, mode="max", min_delta=t.early_stop_delta),
        steps_per_epoch=steps_per_epoch, batch_transform=fc.mixup_for(config),
        swa=EpochAverage(ema.module if ema else model, max(1, t.epochs - t.swa_epochs + 1)) if t.swa_epochs else None,
    )


def _sync_batchnorm(model: torch.nn.Module, sync_bn: bool, world: int, device: torch.device) -> torch.nn.Module:
    """``model`` with SyncBatchNorm layers when train.sync_bn asks for them under DDP (world > 1)."""
    if not (sync_bn and world > 1):
        return model
    if device.type != "cuda":  # torch's SyncBatchNorm has no CPU kernel
        raise SegkitError(f"train.sync_bn: SyncBatchNorm runs on GPUs only (this run is on {device.type})")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _restore(parts: st.Parts, run_dir: Path, resuming: bool, seed: int, rank: int) -> tuple[int, Optional[dict]]:
    """(first epoch to run, best so far): 1 and None for a new run, else from the last checkpoint.

    Ranks other than 0 reseed torch's RNG with seed + 1000 x epochs done + rank, so their dropout
    masks differ (the windows are seeded per item already)."""
    if not resuming:
        if rank:
            torch.manual_seed(seed + rank)
        return 1, None
    existing = ckpt.list_checkpoints(run_dir / "checkpoints")
    done, best = 0, None
    if existing:
        state = ckpt.load_checkpoint(existing[-1], required_keys=preflight.RESUME_KEYS)
        done = st.restore_training_state(state, parts)
        best = state.get("best")
        if rank:  # per-item seeding makes the torch RNG irrelevant to the data; keep ranks distinct
            torch.manual_seed(seed + 1000 * done + rank)
    if distributed.is_main():
        truncate_jsonl(run_dir / "metrics.jsonl", done)
    _log(f"resuming {run_dir} after epoch {done}")
    return done + 1, best


def _run_epochs(config: Config, parts: st.Parts, run_dir: Path, data: TrainingData, preprocess: Preprocess,
                device: torch.device, start_epoch: int, best: Optional[dict], hooks: Sequence[EpochHook]):
    """Train, validate, record and checkpoint each epoch; returns (last epoch, its record, best)."""
    # why: the epoch loop with its hooks, checkpointing and early stop in one place, as nanoGPT keeps its loop
    # readable in one sitting.
    t, main = config.train, distributed.is_main()
    settings = fc.validation_settings(config)
    metric = fc.best_metric(config)
    checkpoint_dir = run_dir / "checkpoints"
    epoch, record, outcome = start_epoch - 1, {}, "finished"
    try:
        for epoch in range(start_epoch, t.epochs + 1):
            parts.dataset.set_epoch(epoch)
            if parts.batch_transform is not None:
                parts.batch_transform.set_epoch(epoch)
            started, started_cpu = time.time(), time.process_time()
            stats = train_one_epoch(
                parts.ddp_model, parts.loader, parts.loss_fn, parts.optimizer, scheduler=parts.scheduler,
                device=device, amp=t.amp, scaler=parts.scaler, accumulate=t.accumulate, clip=t.clip,
                channels_last=t.channels_last, ema=parts.ema, progress=config.run.progress and main,
                desc=f"epoch {epoch}/{t.epochs}", step_offset=(epoch - 1) * parts.steps_per_epoch,
                batch_transform=parts.batch_transform,
            )
            st.sync_buffers(parts.model, parts.ema.module if parts.ema is not None else None)
            if parts.swa is not None:  # the weights validated below join the average of the last epochs
                parts.swa.update(parts.ema.module if parts.ema is not None else parts.model, epoch)
            record = st.numeric({"epoch": epoch, "train_loss": stats["loss"], "terms": stats.get("terms"),
                                 "lr": stats["lr"]})
            if data.val_pairs:  # every rank predicts its share of the rows (segkit.train.validate)
                evaluated = parts.ema.module if parts.ema is not None else parts.model
                record.update(_validate_epoch(evaluated, data, preprocess, settings, device, run_dir, epoch,
                                              progress=config.run.progress and main))
            record["seconds"] = round(time.time() - started, 2)
            record["cpu_seconds"] = round(time.process_time() - started_cpu, 2)  # less sensitive to other load
            record = st.broadcast(record)
            stop = parts.early.step(record[metric]) if metric in record else False
            if metric in record and parts.early.improved:
                best = {"epoch": epoch, "value": record[metric], "metric": metric}
            verdict = None
            if main:
                st.record_epoch(run_dir, record)
                ckpt.save_checkpoint(checkpoint_dir / ckpt.checkpoint_name(epoch),
                                     st.training_state(parts, epoch, best, record))
                keep = checkpoint_dir / ckpt.checkpoint_name(best["epoch"]) if best else None
                ckpt.prune_checkpoints(checkpoint_dir, t.keep_last, keep)
                update_run_info(run_dir, best_epoch=best["epoch"] if best else epoch, last_epoch=epoch)
                try:
                    for hook in hooks:
                        hook(run_dir, record)
                except StopRun as request:
                    verdict = request.status
            score = f"  {metric.replace('_', ' ')} {record[metric]:.4f}" if metric in record else ""
            _log(f"epoch {epoch}: loss {record['train_loss']:.4f}{score}  ({record['seconds']} s)")
            verdict = st.broadcast(verdict)  # every rank stops together
            distributed.barrier()
            if verdict:
                _log(f"stopped after epoch {epoch}: {verdict}")
                outcome = verdict
                break
            if stop:
                _log(f"early stop: no improvement in {parts.early.bad_epochs} epochs")
                break
    except BaseException as exc:
        _fail(run_dir, exc)
        raise
    return epoch, record, best, outcome


def _validate_epoch(model, data: TrainingData, preprocess: Preprocess, settings, device, run_dir: Path,
                    epoch: int, progress: bool = False) -> dict:
    """The epoch's validation scores for metrics.jsonl; cls also draws plots/confusion_epoch_NNNN.png."""
    result = validate([(model, 1.0)], data.val_pairs, preprocess, settings, device, progress=progress)
    if settings.task != "cls":
        objects = {f"val_{k}": result[k] for k in ("object_f1", "dsb") if k in result}
        return {"val_dice": result["dice"], **objects}
    report = result["report"]
    if distributed.is_main():
        plot_confusion(report["confusion"], list(settings.class_names),
                       run_dir / "plots" / f"confusion_epoch_{epoch:04d}.png",
                       title=f"epoch {epoch}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}")
    return {"val_f1": result["f1"], "val_accuracy": result["accuracy"]}


def _finish_average(config: Config, parts: st.Parts, run_dir: Path, data: TrainingData, preprocess: Preprocess,
                    device, epoch: int) -> None:
    """train.swa_epochs: the average of the last epochs, BatchNorm recomputed, validated, saved (swa.pt)."""
    settings = fc.validation_settings(config)

    def evaluate(model) -> dict:
        if not data.val_pairs:
            return {}
        result = validate([(model, 1.0)], data.val_pairs, preprocess, settings, device)
        return {"val_dice": result["dice"]} if settings.task != "cls" else {"val_f1": result["f1"]}

    result = finish_average(parts.swa, parts.dataset, run_dir / "checkpoints" / "swa.pt", evaluate=evaluate,
                            batch_size=config.train.batch_size, device=device, epoch=epoch,
                            save=distributed.is_main())
    if result is not None and distributed.is_main():
        update_run_info(run_dir, swa=result)
        scores = "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in result.items() if k.startswith("val_"))
        _log(f"weight average of epochs {result['epochs'][0]}-{result['epochs'][1]}: {scores}  (checkpoints/swa.pt)")


def _fail(run_dir: Path, exc: BaseException) -> None:
    """Record why the run stopped; a SegkitError (e.g. a NaN loss) is re-raised naming the last good checkpoint."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not (run_dir / "run.json").is_file():
        raise SegkitError(f"{run_dir}: the run directory disappeared while training (deleted or moved?); stopped")
    if distributed.is_main():
        with contextlib.suppress(OSError, SegkitError):  # a full disk: run.json stays "running", still resumable
            update_run_info(run_dir, status=status, error=message)
    if isinstance(exc, SegkitError):
        kept = ckpt.list_checkpoints(run_dir / "checkpoints")
        where = f"last good checkpoint {kept[-1]}" if kept else "no checkpoint was written"
        raise SegkitError(f"{message.removesuffix('; last good checkpoint kept')} ({where}; run status {status})") from None
