"""`segkit tune`: Optuna's TPE sampler and median pruner over a search space of config keys.

Each trial is a normal training run (runs/STUDY-tNNN, so `runs`, `evaluate` and `infer` work on
it). Its per-epoch validation score is reported to the pruner through one of fit's epoch hooks;
a trial the pruner stops ends as a run with status `pruned`. The study lives in a storage that
outlives the process: by default the SQLite file runs/optuna.db, or any `--storage` URL
(a database URL, or a path for Optuna's journal file, which works on a shared disk without a
database server), so a killed search resumes where it stopped and several machines can work on
one study; `optuna-dashboard STORAGE` shows it.

Resuming: trials finished (complete or pruned) count towards --trials; a trial left `running` by
a process of this host that is gone is marked failed and its parameters are queued again.
"""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from segkit.ground.config import Config, flatten_config, load_config, to_dict
from segkit.ground.errors import SegkitError
from segkit.tune.space import Dimension, override
from segkit.train.fit import StopRun
from segkit.runs.lock import exclusive
from segkit.runs.rundir import _process_alive, read_jsonl, read_run_info

DEFAULT_STORAGE = "optuna.db"  # in the runs folder
PRUNER_STARTUP_TRIALS = 2  # trials that always run to the end before the median pruner may stop one
PRUNER_WARMUP_EPOCHS = 1  # epochs of every trial that are never pruned
SQLITE_BUSY_SECONDS = 300  # how long a worker waits for another's SQLite write
METRICS = ("val_dice", "val_f1", "val_accuracy")  # the first a run records is the score maximised
BOOKKEEPING = {"run.name", "run.runs_dir", "run.progress"}  # not settings of the best config


def storage_url(storage: Optional[str], runs_dir: Path) -> str:
    """The storage as Optuna takes it; a path without '://' is a journal file."""
    if storage is None:
        return f"sqlite:///{(Path(runs_dir) / DEFAULT_STORAGE).resolve()}"
    return storage


def open_storage(url: str):
    """An Optuna storage, opened now: an unreachable or unwritable one fails before any training."""
    import optuna

    try:
        if "://" not in url:  # Optuna's journal file: appends with file locks, fine on a shared disk
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            folder = Path(url).resolve().parent
            if not folder.is_dir():
                raise SegkitError(f"--storage {url}: folder {folder} does not exist")
            return JournalStorage(JournalFileBackend(url))
        # SQLite: several workers of one study wait for each other's writes (a busy timeout) instead
        # of failing with "database is locked"
        options = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}} if url.startswith("sqlite:") else None
        # two workers creating a new SQLite file at once would both create its tables: one at a time
        with exclusive(url[len("sqlite:///"):] + ".lock") if url.startswith("sqlite:///") else nullcontext():
            storage = optuna.storages.RDBStorage(url, engine_kwargs=options)
            storage.get_all_studies()  # connect now
        return storage
    except SegkitError:
        raise
    except Exception as exc:  # SQLAlchemy and drivers raise their own types for a bad URL or server
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegkitError(f"--storage {url}: cannot open the study storage ({detail})") from None


@dataclass
class TuneResult:
    study: object
    best_run: Optional[Path]
    best_value: Optional[float]
    best_yaml: str


def _fail_stale_trials(study) -> int:
    """Trials left running by a dead process of this host: failed, their parameters queued again."""
    from optuna.trial import TrialState

    host, stale = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid and pid != os.getpid() and not _process_alive(int(pid)):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another worker starting at the same time marked it first
                continue
            if trial.params:
                study.enqueue_trial(trial.params, skip_if_exists=False)
            stale += 1
    return stale


def best_config_yaml(run_dir: Path) -> str:
    """The settings of a run that differ from the defaults, as YAML for `--config` (bookkeeping left out)."""
    config = flatten_config(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    defaults = flatten_config(to_dict(Config()))
    nested: dict = {}
    for key, value in sorted(config.items()):
        if key not in BOOKKEEPING and defaults.get(key, object()) != value:
            section, _, name = key.partition(".")
            if name:
                nested.setdefault(section, {})[name] = value
            else:
                nested[section] = value
    return yaml.safe_dump(nested, sort_keys=False)


def run_score(run_dir: Path) -> Optional[float]:
    """The best validation score a run recorded (None without validation)."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    metric = next((m for m in METRICS if any(m in r for r in records)), None)
    return max(float(r[metric]) for r in records if metric in r) if metric else None


def tune(base: Config, space: list[Dimension], *, trials: int, fit: Callable, storage: Optional[str] = None,
         study_name: str = "tune", seed: int = 42, prune: bool = True, log: Callable[[str], None] = print) -> TuneResult:
    """Run trials until the study has `trials` finished ones. `fit(config, hooks=[...])` trains one run
    and returns its directory (segkit.train.fit.fit; a parameter, so a test or a caller can wrap it)."""
    # why: the study loop (create or resume, ask, run a trial, prune, tell) is one sequence; its options are
    # keywords from the CLI.
    try:
        import optuna
    except ImportError:
        raise SegkitError("segkit tune needs optuna: pip install 'segkit[tune]'") from None
    from optuna.trial import TrialState

    if trials < 1:
        raise SegkitError(f"--trials must be >= 1, got {trials}")
    runs_dir = Path(base.run.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, runs_dir)
    handle = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = 0
    if study_name in [s.study_name for s in optuna.get_all_study_summaries(handle)]:
        existing = len(optuna.load_study(study_name=study_name, storage=handle).trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)
              if prune else optuna.pruners.NopPruner())
    # the sampler's seed moves on with the study, so a resumed search (or a second worker joining) does not
    # replay its first proposals
    sampler = optuna.samplers.TPESampler(seed=seed + existing)
    study = optuna.create_study(study_name=study_name, storage=handle, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stale = _fail_stale_trials(study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    log(f"study {study_name!r} in {url}: {done} finished trial(s)" + (f", {stale} interrupted one(s) queued again" if stale else ""))

    def objective(trial) -> float:
        params = {dim.key: dim.suggest(trial) for dim in space}
        name = f"{study_name}-t{trial.number:03d}"
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(runs_dir / name))
        config = load_config(None, [override(k, v) for k, v in params.items()] + [f"run.name={name}"], base=base)

        def report(run_dir: Path, record: dict) -> None:  # fit's epoch hook: the pruner sees every epoch
            value = next((record[m] for m in METRICS if m in record), None)
            if value is not None and prune:
                trial.report(float(value), int(record["epoch"]))
                if trial.should_prune():
                    raise StopRun("pruned")

        try:
            run_dir = fit(config, hooks=[report])
        except SegkitError as exc:  # e.g. a sampled size the model cannot take: this trial fails, the search goes on
            log(f"trial {trial.number}: failed: {exc}")
            return float("nan")
        except torch.cuda.OutOfMemoryError as exc:  # e.g. a sampled batch or size too large for the GPU: the same
            torch.cuda.empty_cache()  # give the next trial the memory back (a no-op without CUDA)
            log(f"trial {trial.number}: failed: out of GPU memory ({str(exc).splitlines()[0][:160]})")
            return float("nan")
        except KeyboardInterrupt:  # Ctrl-C: the trial fails; its parameters are tried first on resume
            trial.study.enqueue_trial(params, skip_if_exists=False)
            raise
        score = run_score(run_dir)
        status = read_run_info(run_dir).get("status")
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        if status == "pruned":
            log(f"trial {trial.number}: pruned ({shown})  {run_dir}")
            raise optuna.TrialPruned()
        if score is None:
            raise SegkitError(f"{run_dir}: the run recorded no validation score (does the manifest have a validation fold?)")
        log(f"trial {trial.number}: {score:.4f} ({shown})  {run_dir}")
        return score

    remaining = max(0, trials - done)
    if remaining:
        study.optimize(objective, n_trials=remaining,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return TuneResult(study, None, None, "")
    best = max(complete, key=lambda t: t.value)
    best_run = Path(best.user_attrs["run_dir"])
    return TuneResult(study, best_run, best.value, best_config_yaml(best_run))
