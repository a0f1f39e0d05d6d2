"""The run directory: runs/NAME/ with config.yaml, run.json, preprocess.json, metrics.jsonl,
checkpoints/ and plots/. Everything a later command needs is read back from here."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

import yaml

from segkit.ground.config import Config, to_dict
from segkit.ground.errors import SegkitError
from segkit.io.atomic import remove_stale_temps, write_json, write_text

RUN_FILE = "run.json"


def save_config(config: Config, path: Path) -> None:
    """The resolved config as YAML, atomically, so a run directory never holds half a config."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def append_jsonl(path: Path, record: dict) -> None:
    """Rewrite the whole file atomically: a crash never leaves half a line behind."""
    text = path.read_text() if path.exists() else ""
    write_text(path, text + json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def create_run_dir(runs_dir: Path, name: Optional[str], command: str) -> Path:
    """A new, empty run directory; an existing name is refused rather than overwritten."""
    if name is None:
        name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        candidate, n = name, 1
        while (runs_dir / candidate).exists():
            n += 1
            candidate = f"{name}-{n}"
        name = candidate
    run_dir = runs_dir / name
    if run_dir.exists():
        raise SegkitError(f"{run_dir}: run directory exists (choose another --name, or --resume it)")
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "plots").mkdir()
    return run_dir


def read_run_info(run_dir: Path) -> dict:
    path = run_dir / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SegkitError(f"{run_dir}: not a segkit run directory (no {RUN_FILE})") from None
    except (OSError, ValueError) as exc:
        raise SegkitError(f"{path}: unreadable run record ({exc})") from None


def update_run_info(run_dir: Path, **changes) -> dict:
    path = run_dir / RUN_FILE
    info = json.loads(path.read_text()) if path.exists() else {}
    info.update(changes)
    write_json(path, info)
    return info


def resolve_run(spec: Optional[str], runs_dir: Path, commands: tuple[str, ...] = ("train", "finetune")) -> Path:
    """A run given by path or by name under runs_dir; None means the newest run of those commands."""
    if spec is None:
        return latest_run(runs_dir, commands)
    for candidate in (Path(spec), runs_dir / spec):
        if (candidate / RUN_FILE).exists():
            return candidate
    raise SegkitError(f"{spec}: no such run (looked in {Path(spec)} and {runs_dir / spec})")


def latest_run(runs_dir: Path, commands: tuple[str, ...]) -> Path:
    runs = []
    for path in runs_dir.glob(f"*/{RUN_FILE}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        # a run that ended without a checkpoint (failed before its first epoch) is never the default
        if info.get("command") in commands and any((path.parent / "checkpoints").glob("epoch_*.pt")):
            runs.append((info.get("created", 0), path.parent))
    if not runs:
        raise SegkitError(f"{runs_dir}: no {' or '.join(commands)} run with a checkpoint found "
                          "(run `segkit train` first)")
    return max(runs)[1]


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Drop records past ``last_epoch`` (written before a crash that lost their checkpoint)."""
    if not path.exists():
        return
    records = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= last_epoch]
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def check_resumable(run_dir: Path, check_live: bool = True) -> dict:
    """The run record of a run that may be resumed; one-line errors for finished or live runs."""
    info = read_run_info(run_dir)
    status = info.get("status")
    if status == "finished":
        raise SegkitError(f"{run_dir}: run has finished; nothing to resume (finetune it instead)")
    if info.get("command") not in ("train", "finetune"):
        raise SegkitError(f"{run_dir}: not a training run (command {info.get('command')!r})")
    pid, host = info.get("pid"), info.get("host")
    if check_live and status == "running" and pid and host == socket.gethostname() and pid != os.getpid() and _process_alive(pid):
        raise SegkitError(f"{run_dir}: run is still running (pid {pid}); stop it before resuming")
    return info


def mark_running(run_dir: Path, **changes) -> dict:
    """status running, with this process's pid and host (so a second resume can tell it is live)."""
    return update_run_info(run_dir, status="running", pid=os.getpid(), host=socket.gethostname(), **changes)


def remove_stale_run_temps(runs_dir: Path, run_dir: Optional[Path] = None) -> list[Path]:
    """Temporary files of killed processes (a checkpoint or run.json being written at SIGKILL) in
    every run directory, its checkpoints/ and plots/, and in every folder under ``run_dir`` (the
    run being resumed: also what its evaluations and trackers wrote); files of live processes stay."""
    folders = [folder for run in Path(runs_dir).glob(f"*/{RUN_FILE}")
               for folder in (run.parent, run.parent / "checkpoints", run.parent / "plots")]
    if run_dir is not None:
        folders += [Path(run_dir), *(p for p in Path(run_dir).rglob("*") if p.is_dir())]
    return remove_stale_temps(*folders)
