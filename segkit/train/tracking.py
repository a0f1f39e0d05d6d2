"""Experiment trackers for `--log`: none, tensorboard, mlflow. One registry, one interface.

A tracker gets the run's parameters when it is created, every epoch record (it is one of fit's
epoch hooks: `tracker(run_dir, record)`), and at the end the run's status and files (`finish`). MLflow (the `mlflow` extra) records params (the flattened config),
per-epoch metrics (step = epoch) and artifacts (config.yaml, preprocess.json, run.json, plots/),
with the best checkpoint's path as a tag. Its default tracking URI is a SQLite file in the runs
folder: MLflow deprecated its `./mlruns` file store and its newest versions refuse it. Artifacts
go to RUNS/mlartifacts. A resumed segkit run continues the same MLflow run (its id is kept in
run.json). `check_tracking` opens the store before any training, so an unreachable URI is one
error line, not a failure after the first epoch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from segkit.ground.errors import SegkitError
from segkit.runs.lock import exclusive

MLFLOW_DB = "mlflow.db"  # default store, in the runs folder
PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def default_tracking_uri(runs_dir: Path) -> str:
    return f"sqlite:///{(Path(runs_dir) / MLFLOW_DB).resolve()}"


def _require_mlflow():
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SegkitError("--log mlflow: the mlflow package is not installed (pip install 'segkit[mlflow]')") from None


@contextmanager
def _quick_http():
    """A check against an unreachable server should fail in seconds, not after MLflow's retries (minutes)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _experiment_id(client, experiment: str, artifacts: Path) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())


def _store_lock(tracking_uri: str):
    """A lock beside a SQLite store (mlflow.db.lock): two runs opening a new store at once would both
    run MLflow's schema migration on it ("table already exists"); other stores need none."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return exclusive(tracking_uri[len("sqlite:///"):] + ".lock")


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise SegkitError("--log tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None


def check_tracking(tracker: str, *, tracking_uri: str, experiment: str, runs_dir: Path) -> None:
    """Fail before any work when the tracker cannot work (package missing, store unreachable)."""
    if tracker not in TRACKERS:
        raise SegkitError(f"--log {tracker}: unknown tracker; valid: {', '.join(TRACKERS)}")
    if tracker == "tensorboard":
        _require_tensorboard()
    if tracker != "mlflow":
        return
    _require_mlflow()
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise SegkitError(f"tracking URI {tracking_uri}: folder {folder} does not exist")
    try:
        with _quick_http(), _store_lock(tracking_uri):
            _experiment_id(MlflowClient(tracking_uri), experiment, Path(runs_dir) / "mlartifacts")
    except Exception as exc:  # MLflow, SQLAlchemy and requests each raise their own types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegkitError(f"tracking URI {tracking_uri}: cannot reach the MLflow store ({detail[:300]})") from None


def _numbers(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            out[f"{prefix}{key}"] = float(value)
    return out


class MlflowTracker:
    """One MLflow run per segkit run (continued on resume)."""

    def __init__(self, run_dir: Path, *, tracking_uri: str, experiment: str, params: dict,
                 run_id: Optional[str] = None, tags: Optional[dict] = None):
        _require_mlflow()
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunStatus

        self.run_dir = Path(run_dir)
        with _store_lock(tracking_uri):  # one process at a time creates the store and the experiment
            self.client = MlflowClient(tracking_uri)
            if run_id is not None:
                self.run_id = run_id
                self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return
            experiment_id = _experiment_id(self.client, experiment, self.run_dir.parent / "mlartifacts")
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"segkit.run_dir": str(self.run_dir.resolve()), "host": socket.gethostname(),
                                           **{k: str(v) for k, v in (tags or {}).items()}})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:PARAM_CHARS]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def __call__(self, run_dir: Path, record: dict) -> None:
        """fit's epoch hook: the epoch's numbers as metrics (step = epoch)."""
        from mlflow.entities import Metric

        epoch = int(record["epoch"])
        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, epoch) for k, v in _numbers(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, best_checkpoint: Optional[Path] = None) -> None:
        from mlflow.entities import RunStatus

        for name in ("config.yaml", "preprocess.json", "run.json"):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if (self.run_dir / "plots").is_dir() and any((self.run_dir / "plots").iterdir()):
            self.client.log_artifacts(self.run_id, str(self.run_dir / "plots"), artifact_path="plots")
        if best_checkpoint is not None:
            self.client.set_tag(self.run_id, "best_checkpoint", str(Path(best_checkpoint).resolve()))
        mlflow_status = {"finished": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_tag(self.run_id, "segkit.status", status)
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(getattr(RunStatus, mlflow_status)))



class TensorBoardTracker:
    """Epoch records as TensorBoard scalars under RUN/tensorboard."""

    def __init__(self, run_dir: Path, **_):
        _require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.run_id = None

    def __call__(self, run_dir: Path, record: dict) -> None:
        for key, value in _numbers(record).items():
            self.writer.add_scalar(key, value, int(record["epoch"]))
        self.writer.flush()

    def finish(self, status: str, best_checkpoint: Optional[Path] = None) -> None:
        self.writer.close()


TRACKERS = {"none": None, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


def create_tracker(name: str, run_dir: Path, *, tracking_uri: str, experiment: str, params: dict,
                   run_id: Optional[str] = None, tags: Optional[dict] = None):
    """The tracker `name` for a run (None for "none"); `run_id` continues an earlier MLflow run."""
    try:
        factory = TRACKERS[name]
    except KeyError:
        raise SegkitError(f"--log {name}: unknown tracker; valid: {', '.join(TRACKERS)}") from None
    if factory is None:
        return None
    return factory(run_dir, tracking_uri=tracking_uri, experiment=experiment, params=params, run_id=run_id, tags=tags)
