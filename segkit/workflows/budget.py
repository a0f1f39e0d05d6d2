"""The throughput probe and the budget rule: how much training fits the minutes a user has.

The probe runs the real training pieces of a planned config for a few steps on this device
(random windows read and augmented, forward, backward, optimizer step) and one validation pass
of the untrained model over the validation fold, with a clock it is given (tests pass a fake
one). Its result is cached per device, model and window size, so planning twice on the same
machine gives the same plan (``fresh=True`` measures again).

The budget rule splits ``--budget`` into a start-up share (opening the data, statistics), the
training epochs (each with its validation pass) and the empirical stage (EMPIRICAL_PASSES
validation passes: checkpoint candidates and TTA views), and sizes epochs from the measured
step time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from segkit.ground.config import Config
from segkit.ground.errors import SegkitError
from segkit.workflows.rules import Decisions

EMPIRICAL_PASSES = 7  # 3 checkpoint sets + 3 TTA views predicted on validation, + the searches (~1 pass)
MIN_STEPS = 4  # optimizer steps in the shortest epoch worth running
MAX_EPOCHS = 12  # enough for the last-K checkpoint average and a one-cycle schedule to settle
VALIDATION_SHARE = 0.2  # at most this share of the training time goes to per-epoch validation
PROBE_VERSION = 1
LOW_STAGE_SHARE = 0.6  # of the training time, for the low-resolution first stage of a two-stage plan
MIN_STAGE_EPOCHS = 2  # each stage of a two-stage plan: its own one-cycle needs a few epochs


@dataclass(frozen=True)
class Throughput:
    """Seconds measured on this device: ``step_s`` one optimizer step of ``batch_size`` windows at
    ``size`` (reading and augmentation included), ``val_s`` one validation pass over the fold (one
    view, one checkpoint), ``startup_s`` opening the data, statistics and building the model."""

    step_s: float
    val_s: float
    startup_s: float
    batch_size: int
    size: int
    device: str


def _cache_file() -> Path | None:
    from segkit.data.grids import cache_dir  # the one cache folder (SEGKIT_CACHE_DIR; 'off' disables)

    folder = cache_dir()
    return None if folder is None else folder / "throughput.json"


def _cache_key(config: Config, device: str) -> str:
    d, m = config.data, config.model
    return json.dumps([PROBE_VERSION, device, torch_threads(), config.task, m.arch, m.encoder, d.size, d.fov_px,
                       config.train.batch_size, str(d.targets), str(d.manifest), d.val_fold])


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def probe_throughput(config: Config, *, steps: int = 2, clock: Callable[[], float] = time.perf_counter,
                     fresh: bool = False) -> Throughput:
    """Time ``steps`` real training steps and one validation pass of ``config`` (cached, see module doc)."""
    from segkit.runs.device import pick_device

    device = pick_device(config.run.device)
    path, key = _cache_file(), _cache_key(config, str(device))
    cached = {}
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
    if not fresh and clock is time.perf_counter and key in cached:
        return Throughput(**cached[key])
    result = _measure(config, device, steps, clock)
    if path is not None and clock is time.perf_counter:
        from segkit.io.atomic import write_json

        cached[key] = dataclasses.asdict(result)
        write_json(path, cached, make_parents=True)
    return result


def _measure(config: Config, device, steps: int, clock) -> Throughput:
    """The real pieces of one training stage (segkit.train.from_config), timed."""
    import torch
    from torch.utils.data import DataLoader

    from segkit.train import from_config as fc
    from segkit.train.loop import train_one_epoch
    from segkit.train.optim import create_optimizer
    from segkit.train.validate import validate

    t = config.train
    config = dataclasses.replace(config, train=dataclasses.replace(t, windows_per_epoch=(steps + 1) * t.batch_size,
                                                                   subset=1.0))
    started = clock()
    config = fc.with_fov(config)
    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    preprocess = fc.preprocess_for(config, data)
    model = fc.build_model(config, preprocess.in_channels).to(device)
    startup = clock() - started
    dataset = fc.train_dataset(config, data, preprocess, fc.augment_for(config, data, preprocess), rank=0, world=1)
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=False, drop_last=True)
    optimizer = create_optimizer(t.optimizer, model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                 momentum=t.momentum)
    loss_fn = fc.task_loss(config)
    batches = _cycle(loader)  # reading and augmenting the windows is part of a step's time
    # the first step (allocations, lazy opens) is not counted
    train_one_epoch(model, [next(batches)], loss_fn, optimizer, device=device, amp=t.amp, channels_last=t.channels_last, progress=False)
    started = clock()
    stats = train_one_epoch(model, (batch for _, batch in zip(range(steps), batches)), loss_fn, optimizer, device=device, amp=t.amp,
                            channels_last=t.channels_last, progress=False)
    step_s = (clock() - started) / max(1, int(stats.get("steps", steps)))
    started = clock()
    if data.val_pairs:
        validate([(model, 1.0)], data.val_pairs, preprocess, fc.validation_settings(config), device)
    val_s = clock() - started
    torch.set_grad_enabled(True)
    return Throughput(round(step_s, 4), round(val_s, 4), round(startup, 3), t.batch_size, config.data.size,
                      str(device))


def _cycle(loader):
    """Batches of ``loader`` pass after pass (a cls epoch may be a single batch)."""
    while True:
        yield from loader


def budget_rule(tp: Throughput, budget_s: float, *, rows: int | None = None) -> Decisions:
    """train.epochs and train.windows_per_epoch that fit ``budget_s`` with the probe's ``tp``.

    budget = startup + epochs x (steps x step_s + val_s) + EMPIRICAL_PASSES x val_s. Epochs: as many
    as keep validation under VALIDATION_SHARE of the training time, 1..MAX_EPOCHS; windows per
    epoch: the steps left, times the batch size (cls, ``rows`` training rows: an epoch is one pass,
    so the epochs are what fits, and a share of the rows when not even one pass does). A budget without room for one epoch of MIN_STEPS
    steps is refused with the smallest one that works.
    """
    empirical = EMPIRICAL_PASSES * tp.val_s
    training = budget_s - tp.startup_s - empirical
    smallest = tp.startup_s + empirical + tp.val_s + MIN_STEPS * tp.step_s
    if training < tp.val_s + MIN_STEPS * tp.step_s:
        raise SegkitError(f"--budget {format_budget(budget_s)} is too small for one epoch on {tp.device} "
                          f"(one step {tp.step_s:.2f} s, one validation pass {tp.val_s:.2f} s); the smallest that "
                          f"works is {format_budget(math.ceil(smallest))}")
    if rows is not None:
        return _class_epochs(tp, budget_s, training, rows)
    epochs, steps = _epochs_in(tp, training)
    windows = steps * tp.batch_size
    why = (f"{format_budget(budget_s)}: start-up {tp.startup_s:.0f} s + {epochs} x ({steps} steps x "
           f"{tp.step_s:.2f} s + validation {tp.val_s:.2f} s) + empirical stage ~{empirical:.0f} s "
           f"(probe on {tp.device}, batch {tp.batch_size} at {tp.size} px)")
    epochs_why = (f"validation ({tp.val_s:.2f} s a pass) kept under {VALIDATION_SHARE:.0%} of the training time, "
                  f"at most {MAX_EPOCHS}")
    return {"train.epochs": (epochs, epochs_why), "train.windows_per_epoch": (windows, why)}


def _epochs_in(tp: Throughput, seconds: float) -> tuple[int, int]:
    """Epochs and optimizer steps per epoch that fill ``seconds`` of training (validation included)."""
    by_share = int(VALIDATION_SHARE * seconds / max(tp.val_s, 1e-6))
    epochs = max(1, min(MAX_EPOCHS, by_share))
    while epochs > 1 and (seconds - epochs * tp.val_s) / epochs < MIN_STEPS * tp.step_s:
        epochs -= 1
    return epochs, max(0, int((seconds - epochs * tp.val_s) / epochs / tp.step_s))


def stages_rule(low: Throughput, full: Throughput, budget_s: float) -> Decisions | None:
    """Two stages (``low`` size, then a fine-tune at ``full`` size) that fit ``budget_s``, or None.

    Each stage opens the data and builds its model (both start-ups are paid); the empirical stage
    predicts at the full size. The low stage gets LOW_STAGE_SHARE of the training time; both stages
    must hold MIN_STAGE_EPOCHS epochs of MIN_STEPS steps, else one full-size stage is planned.
    """
    empirical = EMPIRICAL_PASSES * full.val_s
    training = budget_s - low.startup_s - full.startup_s - empirical
    plan = []
    for tp, seconds in ((low, LOW_STAGE_SHARE * training), (full, (1 - LOW_STAGE_SHARE) * training)):
        epochs, steps = _epochs_in(tp, seconds)
        if epochs < MIN_STAGE_EPOCHS or steps < MIN_STEPS:
            return None
        plan.append((epochs, steps))
    (e1, s1), (e2, s2) = plan
    why = (f"{format_budget(budget_s)}: {e1} x ({s1} steps x {low.step_s:.2f} s at {low.size} px + validation "
           f"{low.val_s:.2f} s), then {e2} x ({s2} steps x {full.step_s:.2f} s at {full.size} px + validation "
           f"{full.val_s:.2f} s) + empirical stage ~{empirical:.0f} s (probe on {full.device})")
    return {"train.epochs": (e1, f"{LOW_STAGE_SHARE:.0%} of the training time at {low.size} px"),
            "train.windows_per_epoch": (s1 * low.batch_size, why),
            "train.finetune_size": (full.size, f"fine-tune at {full.size} px for the rest of the budget"),
            "train.finetune_epochs": (e2, f"{1 - LOW_STAGE_SHARE:.0%} of the training time at {full.size} px"),
            "train.finetune_windows_per_epoch": (s2 * full.batch_size, why)}


def _class_epochs(tp: Throughput, budget_s: float, training: float, rows: int) -> Decisions:
    epoch_s = math.ceil(rows / tp.batch_size) * tp.step_s + tp.val_s
    epochs = max(1, min(3 * MAX_EPOCHS, int(training / epoch_s)))
    subset = 1.0 if training >= epoch_s else round(max(0.05, (training - tp.val_s) / (epoch_s - tp.val_s)), 2)
    why = (f"{format_budget(budget_s)}: {epochs} pass(es) over {rows} rows of {epoch_s:.1f} s each (probe on "
           f"{tp.device}: {tp.step_s:.2f} s a step of {tp.batch_size}, validation {tp.val_s:.2f} s)")
    return {"train.epochs": (epochs, why), "train.subset": (subset, "the share of the rows one epoch fits")}


def planned_seconds(tp: Throughput, epochs: int, windows_per_epoch: int) -> float:
    """What budget_rule's choice costs by the probe's figures (the check of the fake-clock test)."""
    steps = windows_per_epoch // tp.batch_size
    return tp.startup_s + epochs * (steps * tp.step_s + tp.val_s) + EMPIRICAL_PASSES * tp.val_s


def parse_budget(text: str) -> float:
    """'90s', '10m', '1.5h' or plain seconds -> seconds."""
    raw = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise SegkitError(f"--budget {text!r}: expected a time such as 90s, 10m or 1.5h") from None
    if not value > 0:
        raise SegkitError(f"--budget {text!r}: must be more than 0")
    return value


def format_budget(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


def machine_note() -> str:
    return f"{os.cpu_count()} CPUs, torch {torch_threads()} threads"
