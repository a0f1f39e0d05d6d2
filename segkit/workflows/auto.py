"""`segkit auto DATA --budget 10m`: plan, train, then choose the infer defaults on the validation fold.

    result = run_auto(config, budget_s=600, overrides=[...])   # -> {"run": path, "plan": ..., ...}

The budget covers training and the empirical stage (the plan's probe is measured before it
starts). Training stops after the epoch that would leave too little time for the rest (an
EpochHook: the run ends "finished (budget)" with its checkpoints), so a slower machine than
the probe saw still ends near the budget. Ctrl-C or SIGTERM ends it like any run: checkpoints
kept, `segkit train --resume RUN` continues it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from segkit.ground.config import Config
from segkit.io.atomic import write_text
from segkit.runs.rundir import update_run_info
from segkit.train.fit import StopRun, fit
from segkit.workflows.budget import EMPIRICAL_PASSES, format_budget
from segkit.workflows.empirical import Stage, choose
from segkit.workflows.plan import Plan, make_plan, summary_line


def deadline_hook(train_deadline: float, clock: Callable[[], float] = time.time):
    """An EpochHook that stops training when another epoch like the last would end after ``train_deadline``."""
    last: list[float] = []  # the clock at the previous epoch's end: an epoch is measured by ``clock`` itself

    def hook(run_dir: Path, record: dict) -> None:
        now = clock()
        epoch_s = now - last[-1] if last else float(record.get("seconds", 0.0))
        last.append(now)
        if now + epoch_s > train_deadline:
            raise StopRun("finished (budget)")
    return hook


def train_stages(planned: Config, deadline: float, echo: Callable[[str], None],
                 clock: Callable[[], float] = time.time) -> Path:
    """The planned stage, and the planned fine-tune (train.finetune_size) from its best checkpoint.

    The first stage of two stops at its share of the time left (what the plan gave it), so a slower
    machine than the probe saw still leaves the fine-tune its time; the fine-tune stops at ``deadline``.
    """
    t = planned.train
    if not t.finetune_size:
        return fit(planned, command="train", hooks=[deadline_hook(deadline, clock)])
    first_s = t.epochs * t.windows_per_epoch
    second_s = (t.finetune_epochs or t.epochs) * (t.finetune_windows_per_epoch or t.windows_per_epoch) * (
        t.finetune_size / planned.data.size) ** 2  # a window's cost grows with its pixels
    now = clock()
    first_deadline = now + (deadline - now) * first_s / (first_s + second_s)
    first = fit(planned, command="train", hooks=[deadline_hook(first_deadline, clock)])
    echo(f"stage 1 ({planned.data.size} px): {first}; fine-tune at {t.finetune_size} px")
    second = dataclasses.replace(
        planned,
        run=dataclasses.replace(planned.run, name=f"{planned.run.name}-ft" if planned.run.name else None),
        data=dataclasses.replace(planned.data, size=t.finetune_size, fov_px=planned.data.fov_px or planned.data.size),
        train=dataclasses.replace(t, epochs=t.finetune_epochs or t.epochs, finetune_size=None, finetune_epochs=None,
                                  windows_per_epoch=t.finetune_windows_per_epoch or t.windows_per_epoch,
                                  finetune_windows_per_epoch=None))
    return fit(second, command="finetune", parent=first, parent_epoch="best", hooks=[deadline_hook(deadline, clock)])


def run_auto(config: Config, *, budget_s: float, overrides: list[str] = (), dry_run: bool = False,
             echo: Callable[[str], None] = print, plan: Plan | None = None,
             clock: Callable[[], float] = time.time) -> dict:
    """Plan (unless ``plan`` is given), train, run the empirical stage; returns the summary dict.

    ``clock`` measures the budget: wall time for users; tools/bench_auto.py passes process CPU time,
    so arms compared on a shared machine get the same computation whatever the load."""
    plan = plan or make_plan(config, budget_s=budget_s, overrides=list(overrides))
    echo(summary_line(plan))
    echo(plan.table())
    if dry_run:
        return {"plan": plan.tree(), "run": None}
    from segkit.runs.device import pick_device

    tp = plan.throughput
    planned = plan.config
    if planned.run.name is None:
        planned = dataclasses.replace(planned, run=dataclasses.replace(
            planned.run, name=f"auto-{time.strftime('%Y%m%d-%H%M%S')}"))
    started = clock()
    reserve = EMPIRICAL_PASSES * tp.val_s if tp else 0.0
    run_dir = train_stages(planned, started + budget_s - reserve, echo, clock)
    plan.write(run_dir / "plan.yaml")
    write_text(run_dir / "fingerprint.json", json.dumps(plan.fingerprint, indent=1) + "\n")
    trained = clock()
    if planned.task == "cls":
        stage = Stage(epochs=planned.infer.epochs, views=("identity",), metric="f1",
                      notes=["cls: calibration and the best epoch are the run's (infer.calibrate, infer.epochs)"])
    else:
        stage = choose(run_dir, pick_device(planned.run.device), deadline=started + budget_s, clock=clock)
    ended = clock()
    summary = {
        "run": str(run_dir), "budget_s": budget_s, "wall_s": round(ended - started, 1),
        "train_s": round(trained - started, 1), "empirical_s": round(ended - trained, 1),
        "metric": stage.metric, "before": stage.before, "after": stage.after, "epochs": stage.epochs,
        "views": list(stage.views), "infer": stage.keys, "notes": stage.notes,
    }
    update_run_info(run_dir, auto=summary)
    for note in stage.notes:
        echo(f"empirical: {note}")
    scores = (f"validation {stage.metric} {stage.before:.4f} (planned) -> {stage.after:.4f} (chosen)"
              if stage.before is not None and stage.after is not None else "validation: planned values kept")
    echo(f"{scores}; wall {summary['wall_s']:.0f} s of {format_budget(budget_s)} "
         f"(train {summary['train_s']:.0f} s, empirical {summary['empirical_s']:.0f} s)")
    echo(f"run {run_dir}: `segkit infer -r {run_dir} IMAGE` uses these settings")
    return summary
