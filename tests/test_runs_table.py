"""`segkit runs`: parents, settings that differ, best score, sorting, curves PNG."""

import re
import shutil

import pytest
from click.testing import CliRunner

from segkit.ground.errors import SegkitError
from segkit.report.runs_table import collect_runs, format_table, plot_curves, select_rows, sort_rows


@pytest.fixture(scope="module")
def runs(trained, module_tmp):
    """The shared trained run copied aside, plus a finetune of it with a changed learning rate."""
    from segkit.cli import cli

    runs_dir = module_tmp("runs_table") / "runs"
    shutil.copytree(trained, runs_dir / "stage1")
    result = CliRunner().invoke(cli, [
        "finetune", "--from", str(runs_dir / "stage1"), "--size", "48", "--epochs", "1", "--lr", "0.0005",
        "--name", "ft", "--set", f"run.runs_dir={runs_dir}"])
    assert result.exit_code == 0, result.output
    return runs_dir


def test_table_lists_parent_and_differing_settings(runs):
    rows = {r["name"]: r for r in collect_runs(runs)}
    assert set(rows) == {"stage1", "ft"}
    ft, stage1 = rows["ft"], rows["stage1"]
    assert ft["parent"] == "stage1" and stage1["parent"] == ""
    # the finetune differs from its parent in size, lr and epochs only
    assert set(ft["changes"]) == {"data.size", "train.lr", "train.epochs"}
    assert ft["changes"]["train.lr"] == 0.0005 and ft["size"] == 48 and ft["fov"] == 48
    # the first stage differs from the defaults (its tiny recipe), e.g. its manifest and field of view
    assert {"data.fov_px", "data.size", "train.epochs", "data.manifest"} <= set(stage1["changes"])
    for row in rows.values():
        assert row["status"] == "finished" and row["metric"] == "val_dice"
        assert 0 <= row["best"] <= 1 and row["epoch"] >= 1 and row["time"] > 0
    text = format_table(list(rows.values()))
    assert text.splitlines()[0].split() == ["name", "parent", "task", "size", "fov", "changed", "best", "epoch",
                                             "time", "status"]
    assert "train.lr=0.0005" in text


def test_sort_by_any_column_and_plot(runs, tmp_path):
    rows = collect_runs(runs)
    assert [r["name"] for r in sort_rows(rows, "name")] == ["ft", "stage1"]
    assert [r["name"] for r in sort_rows(rows, "size", descending=True)] == ["ft", "stage1"]
    with pytest.raises(SegkitError, match="--sort bestt: not a column"):
        sort_rows(rows, "bestt")
    path = plot_curves(select_rows(rows, ["stage1", "ft"]), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SegkitError, match="no run named nope"):
        select_rows(rows, ["nope"])


def test_runs_command(runs, tmp_path):
    from segkit.cli import cli

    result = CliRunner().invoke(cli, ["runs", "--runs-dir", str(runs), "--sort", "best", "--desc",
                                      "--plot", str(tmp_path / "curves.png"), "ft", "stage1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert lines[0].split()[:2] == ["name", "parent"] and set(rows) == {"ft", "stage1"}
    assert rows["ft"][1] == "stage1"  # the finetune's parent
    assert (tmp_path / "curves.png").exists()
    result = CliRunner().invoke(cli, ["runs", "--runs-dir", str(runs), "--sort", "nope"])
    assert result.exit_code == 1 and result.output.startswith("Error: --sort nope: not a column")


def test_a_running_run_whose_process_is_gone_is_stale(runs, tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    copy = tmp_path / "runs"
    for name, pid in (("lost", gone.pid), ("alive", os.getpid())):
        shutil.copytree(runs / "stage1", copy / name)
        info = json.loads((copy / name / "run.json").read_text())
        info.update(status="running", pid=pid, host=socket.gethostname())
        (copy / name / "run.json").write_text(json.dumps(info))
    status = {r["name"]: r["status"] for r in collect_runs(copy)}
    assert status == {"lost": "stale", "alive": "running"}


def test_a_scalar_change_shows_within_the_default_width_next_to_a_large_one(trained, tmp_path):
    """A run differing from the defaults by an augmentation pipeline and the learning rate: `segkit runs` at its
    default width shows train.lr=0.001 and summarises the pipeline by a short hash (the same value, the same hash)."""
    import yaml

    from segkit.cli import cli
    from segkit.ground.config import Config, to_dict

    augment = {"transform": {"__class_fullname__": "Compose", "transforms": [
        {"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "RandomRotate90", "p": 0.5}]}}
    for name in ("a", "b"):
        shutil.copytree(trained, tmp_path / name)
        config = to_dict(Config())
        config["data"]["augment"] = augment
        config["train"]["lr"] = 0.001
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["runs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("a ", "b "))]
    assert len(lines) == 2
    hashes = set()
    for line in lines:
        found = re.search(r"train\.lr=0\.001 data\.augment=<dict #([0-9a-f]{6})>", line)
        assert found, result.output
        hashes.add(found.group(1))
    assert len(hashes) == 1
