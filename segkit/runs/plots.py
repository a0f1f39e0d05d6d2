"""Loss and metric curves from a run's metrics.jsonl, one pair of PNGs per stage.

Each line of metrics.jsonl is a JSON object for one epoch, e.g.
    {"stage": "s256", "epoch": 3, "train_loss": 0.41, "val_loss": 0.44, "val_dice": 0.81, "lr": 1e-4}
Nested objects are flattened ("val": {"dice": ..} -> "val/dice"). Keys containing "loss" go on the
loss plot, "lr" on its own axis, other numbers (except epoch/step/time bookkeeping) on the metric
plot. Lines without "stage" belong to stage "run".
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path

from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path

_SKIP = {"epoch", "step", "steps", "global_step", "seconds", "time", "wall", "images", "batches", "rank",
         "world_size", "timestamp"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = float(v)
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """Parse metrics.jsonl; a torn last line (run killed mid-write) is skipped, others must parse."""
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"{path}: metrics file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise SegkitError(f"{path}: line {i + 1} is not JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _is_bookkeeping(key: str) -> bool:
    leaf = key.rsplit("/", 1)[-1]
    return leaf in _SKIP or leaf.endswith("_seconds") or leaf.endswith("_time")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "run"


def _save(fig, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def plot_metrics(metrics_jsonl_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write <stage>_loss.png and <stage>_metrics.png (when there is something to draw); returns paths."""
    # Figure objects without pyplot: no global backend switch, nothing left open, safe in notebooks
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics_jsonl_path)
    stages: "OrderedDict[str, list[dict]]" = OrderedDict()
    for row in rows:
        stages.setdefault(str(row.get("stage", "run")), []).append(row)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stage, stage_rows in stages.items():
        series: "OrderedDict[str, tuple[list, list]]" = OrderedDict()
        for i, row in enumerate(stage_rows):
            x = row.get("epoch", i + 1)
            for key, val in _flatten(row).items():
                if _is_bookkeeping(key):
                    continue
                xs, ys = series.setdefault(key, ([], []))
                xs.append(x)
                ys.append(val)
        losses = [k for k in series if "loss" in k.lower()]
        lrs = [k for k in series if k.rsplit("/", 1)[-1].lower() in ("lr", "learning_rate")]
        others = [k for k in series if k not in losses and k not in lrs]
        for kind, keys in (("loss", losses), ("metrics", others)):
            if not keys:
                continue
            with_lr = kind == "loss" and lrs
            fig = Figure(figsize=(7, 6 if with_lr else 4))
            axes = fig.subplots(2 if with_lr else 1, 1, squeeze=False, sharex=True)
            ax = axes[0, 0]
            for k in keys:
                ax.plot(*series[k], marker="o", markersize=3, label=k)
            ax.set_title(f"{stage}: {kind}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            if with_lr:
                lax = axes[1, 0]
                for k in lrs:
                    lax.plot(*series[k], label=k)
                lax.set_ylabel("learning rate")
                lax.set_xlabel("epoch")
                lax.grid(alpha=0.3)
            path = out_dir / f"{_safe(stage)}_{kind}.png"
            _save(fig, path)
            written.append(path)
    return written


def plot_confusion(matrix, class_names: list[str], path: str | Path, title: str = "confusion") -> Path:
    """A confusion-matrix PNG (rows = true class, columns = predicted; colour = share of the row),
    each row labelled with its class's precision, recall and F1; counts written in the cells
    when there are at most 20 classes."""
    import numpy as np
    from matplotlib.figure import Figure

    from segkit.metrics.cls import per_class_scores

    matrix = np.asarray(matrix, dtype=np.int64)
    count = len(class_names)
    if matrix.shape != (count, count):
        raise SegkitError(f"plot_confusion: a {matrix.shape} matrix for {count} class names")
    scores = per_class_scores(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(14.0, 3.0 + 0.45 * count)
    fig = Figure(figsize=(side + 2.5, side))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(count), [str(n) for n in class_names], rotation=90 if count > 8 else 0)
    ax.set_yticks(range(count), [f"{n}  P {p:.2f} R {r:.2f} F1 {f:.2f}" for n, p, r, f in
                                 zip(class_names, scores["precision"], scores["recall"], scores["f1"])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if count <= 20:
        for i in range(count):
            for j in range(count):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    return path
