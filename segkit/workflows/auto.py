"""`segkit auto DATA --budget 10m`: plan, train, then choose the infer defaults on the validation fold.

    result = run_auto(config, budget_s=600, overrides=[...])   # -> {"run": path, "plan": ..., ...}

The budget covers training and the empirical stage (the plan's probe is measured before it
starts). Training stops after the epoch that would leave too little time for the rest (an
EpochHook: the run ends "finished (budget)" with its checkpoints), so a slower machine than
the probe saw still ends near the budget. Ctrl-C or SIGTERM ends it like any run: checkpoints
kept, `segkit train --resume RUN` continues its training, and

    result = resume_auto(run_dir, budget_s=300)   # `segkit auto --resume RUN --budget 5m`

continues the whole recipe: the rest of the stage, the planned fine-tune, the empirical stage
(each stage's run keeps plan.yaml and the budget's reserve from its first epoch on).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_text
from segkit.runs.rundir import read_run_info, update_run_info
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


def _keep_plan(plan: Plan, run_dir: Path) -> None:
    plan.write(run_dir / "plan.yaml")
    write_text(run_dir / "fingerprint.json", json.dumps(plan.fingerprint, indent=1) + "\n")


def record_plan(plan: Plan, reserve_s: float):
    """An EpochHook writing plan.yaml, fingerprint.json and the empirical stage's reserve into each stage's run at
    its first epoch: a run cut by Ctrl-C or SIGTERM then carries what resume_auto needs."""
    written: set[Path] = set()

    def hook(run_dir: Path, record: dict) -> None:
        if run_dir in written:
            return
        written.add(run_dir)
        _keep_plan(plan, run_dir)
        update_run_info(run_dir, auto_reserve_s=reserve_s)
    return hook


def fine_tune_config(planned: Config) -> Config:
    """The planned fine-tune stage (train.finetune_size) as a config of its own: run NAME-ft at the new size."""
    t = planned.train
    return dataclasses.replace(
        planned,
        run=dataclasses.replace(planned.run, name=f"{planned.run.name}-ft" if planned.run.name else None),
        data=dataclasses.replace(planned.data, size=t.finetune_size, fov_px=planned.data.fov_px or planned.data.size),
        train=dataclasses.replace(t, epochs=t.finetune_epochs or t.epochs, finetune_size=None, finetune_epochs=None,
                                  windows_per_epoch=t.finetune_windows_per_epoch or t.windows_per_epoch,
                                  finetune_windows_per_epoch=None))


def _first_stage_share(planned: Config) -> float:
    """The first stage's share of the training time when a fine-tune follows (a window's cost grows with its
    pixels)."""
    t = planned.train
    first_s = t.epochs * t.windows_per_epoch
    second_s = (t.finetune_epochs or t.epochs) * (t.finetune_windows_per_epoch or t.windows_per_epoch) * (
        t.finetune_size / planned.data.size) ** 2
    return first_s / (first_s + second_s)


def _unfinished(run_dir: Path) -> bool:
    return read_run_info(run_dir).get("status") in ("running", "interrupted", "failed")


def train_stages(planned: Config, deadline: float, echo: Callable[[str], None],
                 clock: Callable[[], float] = time.time, hooks: tuple = (), resume: Path | None = None) -> Path:
    """The planned stage, and the planned fine-tune (train.finetune_size) from its best checkpoint.

    The first stage of two stops at its share of the time left (what the plan gave it), so a slower
    machine than the probe saw still leaves the fine-tune its time; the fine-tune stops at ``deadline``.
    ``resume``: a run of this plan cut short (either stage); what it left undone is done, in order.
    """
    def stage(config, deadline_s, **how):
        return fit(config, hooks=[*hooks, deadline_hook(deadline_s, clock)], **how)  # the plan is kept first

    now = clock()
    two = bool(planned.train.finetune_size)
    first_deadline = now + (deadline - now) * _first_stage_share(planned) if two else deadline
    if resume is not None and read_run_info(resume).get("command") == "finetune":
        return stage(planned, deadline, resume=resume) if _unfinished(resume) else resume
    if resume is None:
        first = stage(planned, first_deadline, command="train")
    else:
        first = stage(planned, first_deadline, resume=resume) if _unfinished(resume) else resume
    if not two:
        return first
    second = fine_tune_config(planned)
    echo(f"stage 1 ({planned.data.size} px): {first}; fine-tune at {planned.train.finetune_size} px")
    existing = first.parent / second.run.name if second.run.name else None
    if existing is not None and existing.is_dir() and resume is not None:  # the fine-tune was cut too
        return stage(second, deadline, resume=existing) if _unfinished(existing) else existing
    return stage(second, deadline, command="finetune", parent=first, parent_epoch="best")


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
    tp = plan.throughput
    planned = plan.config
    if planned.run.name is None:
        planned = dataclasses.replace(planned, run=dataclasses.replace(
            planned.run, name=f"auto-{time.strftime('%Y%m%d-%H%M%S')}"))
    started = clock()
    reserve = EMPIRICAL_PASSES * tp.val_s if tp else 0.0
    run_dir = train_stages(planned, started + budget_s - reserve, echo, clock, hooks=(record_plan(plan, reserve),))
    _keep_plan(plan, run_dir)  # also where no epoch ran
    return _empirical(planned.task, run_dir, budget_s, started, echo, clock)


def resume_auto(run: Path, *, budget_s: float, echo: Callable[[str], None] = print,
                clock: Callable[[], float] = time.time) -> dict:
    """Continue an auto run cut short (Ctrl-C, SIGTERM, a killed process): the rest of its training, its planned
    fine-tune, then the empirical stage, all within ``budget_s`` from now."""
    info = read_run_info(run)
    first = Path(info["parent"]) if info.get("command") == "finetune" and info.get("parent") else run
    if not (first / "plan.yaml").is_file():  # a fine-tune started by a resume has its plan in its parent
        raise SegkitError(f"{first}: no plan.yaml (not a segkit auto run, or cut before its first epoch); "
                          f"`segkit train --resume` continues a plain run")
    planned = load_config(first / "plan.yaml")  # the plan names the run only when the user did: use its folder
    planned = dataclasses.replace(planned, run=dataclasses.replace(planned.run, name=first.name,
                                                                   runs_dir=str(first.parent)))
    final = first.parent / fine_tune_config(planned).run.name if planned.train.finetune_size else first
    if final.is_dir() and "auto" in read_run_info(final) and not _unfinished(final):
        raise SegkitError(f"{final}: auto run has finished; nothing to resume")
    echo(f"resuming auto run {run} ({info.get('status')}) within {format_budget(budget_s)}")
    started = clock()
    reserve = float(read_run_info(first).get("auto_reserve_s", 0.0))  # a fine-tune begun by a resume has none
    run_dir = train_stages(planned, started + budget_s - reserve, echo, clock, resume=run)
    if not (run_dir / "plan.yaml").is_file():
        for name in ("plan.yaml", "fingerprint.json"):
            if (first / name).is_file():
                write_text(run_dir / name, (first / name).read_text())
    return _empirical(planned.task, run_dir, budget_s, started, echo, clock)


def _empirical(task: str, run_dir: Path, budget_s: float, started: float, echo: Callable[[str], None],
               clock: Callable[[], float]) -> dict:
    """The empirical stage on the trained run, its summary saved in run.json and printed."""
    from segkit.runs.device import pick_device

    trained = clock()
    config = load_config(run_dir / "config.yaml")
    if task == "cls":
        stage = Stage(epochs=config.infer.epochs, views=("identity",), metric="f1",
                      notes=["cls: calibration and the best epoch are the run's (infer.calibrate, infer.epochs)"])
    else:
        stage = choose(run_dir, pick_device(config.run.device), deadline=started + budget_s, clock=clock)
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
