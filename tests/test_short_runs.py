"""Short runs learn with the default learning rate: the peak lr is scaled to the run's length."""

import json

import pytest
from click.testing import CliRunner

from segkit.cli import cli
from segkit.train.optim import short_run_lr


def test_the_peak_lr_follows_the_run_length():
    assert short_run_lr(3e-3, 32, 32) == short_run_lr(3e-3, 4800, 32) == 3e-3
    assert short_run_lr(3e-3, 16, 32) == pytest.approx(1.5e-3)
    assert short_run_lr(3e-3, 8, 32) == short_run_lr(3e-3, 1, 32) == pytest.approx(1e-3)  # at least a third
    assert short_run_lr(3e-3, 1, 0) == 3e-3  # 0: off


def test_a_short_default_run_on_the_sample_learns(tmp_path):
    """16 optimizer steps at size 64 (the sample recipe, 2 epochs of 64 windows, its seed 42): with the full 3e-3
    the first epoch scored validation Dice 0 and the second 0.556 (tools/bench_short_runs.py); at the scaled
    1.5e-3 the second scores 0.777 here."""
    result = CliRunner().invoke(cli, [
        "train", "--config", "sample", "--size", "64", "--epochs", "2", "--name", "short", "--runs-dir", str(tmp_path),
        "--set", "train.windows_per_epoch=64", "--set", "run.progress=false"])
    assert result.exit_code == 0, result.output
    assert "peak lr 0.0015 (train.lr 0.003 scaled for a run of 16 optimizer steps" in result.output
    dice = [json.loads(line)["val_dice"] for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    assert max(dice) > 0.65, dice
