"""`segkit runs`: one table of every run under the runs folder, and their validation curves in one PNG.

A row per run directory (run.json + config.yaml + metrics.jsonl): name, parent, task, network
size, field of view, the settings that differ from the parent's (a finetune, a tune trial with a
parent) or else from the defaults, the best validation score and its epoch, the training time
(sum of the epochs' seconds), and the status. A run still marked `running` whose process is gone
on this host shows as `stale`.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Optional

import yaml

from segkit.ground.config import Config, flatten_config, to_dict
from segkit.ground.errors import SegkitError
from segkit.runs.rundir import RUN_FILE, _process_alive, read_jsonl

COLUMNS = ("name", "parent", "task", "size", "fov", "changed", "best", "epoch", "time", "status")
METRICS = ("val_dice", "val_f1", "val_accuracy")  # the first one a run's metrics.jsonl has is its score
IGNORED = {"run.name", "run.runs_dir", "run.progress"}  # bookkeeping, not settings


SHORT = 24  # characters of a value shown in full in the `changed` column


def _compact(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def changed_text(changed: dict) -> str:
    """The `changed` cell: short scalar settings first (`train.lr=0.001`), then large values summarised by
    their kind and a short hash of their text (`data.augment=<dict #3f2a9c>`; equal values, equal hashes),
    so a scalar difference stays visible in a narrow column."""
    short, large = [], []
    for key, value in sorted(changed.items()):
        text = _compact(value)
        if not isinstance(value, (dict, list)) and len(text) <= SHORT:
            short.append(f"{key}={text}")
        else:
            kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "text"
            large.append(f"{key}=<{kind} #{hashlib.sha1(text.encode()).hexdigest()[:6]}>")
    return " ".join(short + large)


def differences(config: dict, reference: dict) -> dict:
    """Dotted keys of `config` whose value differs from `reference` (bookkeeping keys left out)."""
    return {k: v for k, v in config.items() if k not in IGNORED and reference.get(k, object()) != v}


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    try:
        return flatten_config(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return {}


def _score(records: list[dict], best_epoch) -> tuple[Optional[str], Optional[float], Optional[int]]:
    """(metric name, best value, its epoch) from the epoch records."""
    metric = next((m for m in METRICS if any(m in r for r in records)), None)
    if metric is None:
        return None, None, None
    scored = [r for r in records if isinstance(r.get(metric), (int, float))]
    chosen = next((r for r in scored if r.get("epoch") == best_epoch), None)
    if chosen is None and scored:
        chosen = max(scored, key=lambda r: r[metric])
    return (metric, float(chosen[metric]), int(chosen["epoch"])) if chosen else (metric, None, None)


def _status(info: dict) -> str:
    status = info.get("status") or "?"
    pid = info.get("pid")
    if status == "running" and pid and info.get("host") == socket.gethostname() and not _process_alive(int(pid)):
        return "stale"
    return status


def collect_runs(runs_dir: Path) -> list[dict]:
    """One row (dict over COLUMNS plus run_dir, metric, created) per run directory, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise SegkitError(f"{runs_dir}: runs folder not found")
    defaults = flatten_config(to_dict(Config()))
    rows = []
    for info_path in sorted(runs_dir.glob(f"*/{RUN_FILE}")):
        run_dir = info_path.parent
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign file: not a run we can describe
        config = _read_config(run_dir)
        parent = Path(info["parent"]) if info.get("parent") else None
        reference = _read_config(parent) if parent is not None and (parent / "config.yaml").exists() else defaults
        records = read_jsonl(run_dir / "metrics.jsonl")
        metric, best, epoch = _score(records, info.get("best_epoch"))
        changed = differences(config, reference)
        rows.append({
            "name": run_dir.name, "parent": parent.name if parent else "", "task": config.get("task", "?"),
            "size": config.get("data.size"), "fov": config.get("data.fov_px"),
            "changed": changed_text(changed), "changes": changed,
            "best": best, "epoch": epoch, "time": round(sum(float(r.get("seconds", 0)) for r in records), 1),
            "status": _status(info), "metric": metric, "run_dir": run_dir, "created": info.get("created") or 0,
        })
    rows.sort(key=lambda r: (r["created"], r["name"]))
    return rows


def sort_rows(rows: list[dict], column: str, descending: bool = False) -> list[dict]:
    """Sorted by any column; empty cells last whichever the direction."""
    if column not in COLUMNS:
        raise SegkitError(f"--sort {column}: not a column; valid: {', '.join(COLUMNS)}")
    present = [r for r in rows if r[column] not in (None, "")]
    missing = [r for r in rows if r[column] in (None, "")]
    numeric = all(isinstance(r[column], (int, float)) for r in present)
    key = (lambda r: r[column]) if numeric else (lambda r: str(r[column]))
    return sorted(present, key=key, reverse=descending) + missing


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if value is None:
        return "-"
    if column == "best":
        return f"{value:.4f}"
    if column == "time":
        return f"{value:.0f}s"
    return str(value)


def format_table(rows: list[dict], width: int = 60) -> str:
    """Aligned plain-text table; the `changed` column is cut at `width` characters (… marks a cut)."""
    cells = [[_cell(r, c) for c in COLUMNS] for r in rows]
    for line in cells:
        changed = COLUMNS.index("changed")
        if len(line[changed]) > width:
            line[changed] = line[changed][: width - 1] + "…"
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]
    out = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(out)


def plot_curves(rows: list[dict], out_path: Path, metric: Optional[str] = None) -> Path:
    """The validation curve of every row in one PNG (x: epoch), written atomically."""
    from matplotlib.figure import Figure

    from segkit.io.atomic import atomic_path

    metric = metric or next((r["metric"] for r in rows if r["metric"]), None)
    if metric is None:
        raise SegkitError("--plot: none of the chosen runs has validation scores")
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    drawn = 0
    for row in rows:
        points = [(r["epoch"], r[metric]) for r in read_jsonl(row["run_dir"] / "metrics.jsonl") if metric in r]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=row["name"])
            drawn += 1
    if not drawn:
        raise SegkitError(f"--plot: none of the chosen runs recorded {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(out_path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(out_path)


def select_rows(rows: list[dict], names: list[str]) -> list[dict]:
    """The rows of the named runs, in the order given; an unknown name is an error listing the known ones."""
    by_name = {r["name"]: r for r in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SegkitError(f"no run named {', '.join(unknown)} (runs: {', '.join(by_name) or 'none'})")
    return [by_name[n] for n in names]
