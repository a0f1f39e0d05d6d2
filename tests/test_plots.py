"""plot_metrics writes real PNGs per stage from metrics.jsonl; torn last lines are tolerated."""

import json

import pytest

from segkit.ground.errors import SegkitError
from segkit.runs.plots import plot_metrics, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def test_plots_per_stage_and_atomic(tmp_path):
    rows = [{"stage": "s256", "epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.5 + e / 10,
             "lr": 1e-3 / e, "seconds": 3.0} for e in (1, 2, 3)]
    rows += [{"stage": "s512", "epoch": 1, "train": {"loss": 0.3}, "val": {"dice": 0.9, "iou": 0.8}}]
    path = _write(tmp_path / "metrics.jsonl", rows, tail='{"stage": "s5')
    out = plot_metrics(path, tmp_path / "plots")
    assert [p.name for p in out] == ["s256_loss.png", "s256_metrics.png", "s512_loss.png", "s512_metrics.png"]
    for p in out:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in out)
    again = plot_metrics(path, tmp_path / "plots")  # rewritten each epoch in place
    assert again == out


def test_only_losses_gives_only_loss_plot(tmp_path):
    path = _write(tmp_path / "m.jsonl", [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}])
    assert [p.name for p in plot_metrics(path, tmp_path)] == ["run_loss.png"]


def test_bad_metrics_files(tmp_path):
    with pytest.raises(SegkitError, match="missing.jsonl"):
        plot_metrics(tmp_path / "missing.jsonl", tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(SegkitError, match="bad.jsonl: line 2"):
        read_metrics(bad)
