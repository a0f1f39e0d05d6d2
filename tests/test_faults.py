"""Faults (issue 10): signals, killed processes and races leave nothing half-written.

Fast: stale temporary files of a dead process are removed by the next `infer` / `train` start
in that folder (live ones stay); SIGTERM raises the Ctrl-C path and exits 143; all-or-nothing
staging; an exclusive commit loses cleanly to a path that appeared meanwhile. Slow (real
subprocesses killed mid-work): SIGTERM / SIGKILL mid-infer and mid-train, two concurrent infers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from segkit.cli import cli
from segkit.ground.errors import SegkitError
from segkit.io.atomic import AtomicFile, remove_stale_temps, staged_commits
from segkit.runs.signals import Terminated, exit_code, interrupt_on_sigterm

ENV = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")


def dead_pid() -> int:
    """The pid of a process that has exited (its number is free again)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


# ------------------------------------------------------------------ fast


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    stale = tmp_path / f".sub.csv.{dead_pid()}.k3j_x.tmp"
    stale_ome = tmp_path / f".m.ome.tif.{dead_pid()}.a1b2.levels.tmp"
    live = tmp_path / f".sub.csv.{os.getpid()}.zz9.tmp"
    other = tmp_path / ".hidden.tmp"  # not segkit's naming: never touched
    for path in (stale, stale_ome, live, other):
        path.write_text("x")
    assert sorted(remove_stale_temps(tmp_path, tmp_path / "missing")) == sorted([stale, stale_ome])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_infer_start_removes_stale_temps_in_its_output_folder(tmp_path, trained, project):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".sub.csv.{dead_pid()}.abc.tmp"
    stale.write_bytes(b"half a csv")
    result = CliRunner().invoke(cli, ["infer", "--run", str(trained), "--rle", str(out / "sub.csv"),
                                      str(project / "img0.tif")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sub.csv"]


def test_train_start_removes_stale_checkpoint_temps(tmp_path, trained):
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs / "stage1", copy_function=os.link)
    stale = runs / "stage1" / "checkpoints" / f".epoch_0003.pt.{dead_pid()}.q1.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = CliRunner().invoke(cli, ["train", "--resume", str(runs / "stage1")])
    assert result.exit_code == 1 and "has finished" in result.output  # refused, but the folder is clean
    assert temps(runs) == []


def test_sigterm_raises_the_ctrl_c_path_and_exit_143():
    with pytest.raises(KeyboardInterrupt) as caught:
        with interrupt_on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends
    assert isinstance(caught.value, Terminated) and exit_code(caught.value) == 143
    assert exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_sigterm_inside_a_command_is_one_line_and_143(monkeypatch, trained, project, tmp_path):
    """The CLI's handler, through the real `infer` command: SIGTERM while predicting."""
    import segkit.infer.run as run

    real = run.post_process

    def terminate_then_continue(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "post_process", terminate_then_continue)
    result = CliRunner().invoke(cli, ["infer", "--run", str(trained), "--rle", str(tmp_path / "o.csv"),
                                      "--mask", str(tmp_path / "m_{id}.tif"), str(project / "img0.tif")])
    assert result.exit_code == 143, result.output
    assert result.output.strip() == "interrupted (SIGTERM); outputs not written, checkpoints kept"
    assert list(tmp_path.iterdir()) == []


def test_error_from_a_dataloader_worker_is_one_line():
    """torch re-raises a worker's SegkitError with the worker's traceback in its text; the CLI keeps one line."""
    from torch._utils import ExceptionWrapper

    from segkit.cli.options import _one_line

    try:
        raise SegkitError("x.tif: cannot read rows 0..64 (corrupt or truncated file?)")
    except SegkitError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(SegkitError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert _one_line(str(caught.value)) == "x.tif: cannot read rows 0..64 (corrupt or truncated file?)"


def test_staged_commits_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_commits():
            with AtomicFile(tmp_path / "a.txt") as first:
                first.tmp.write_text("a")
            assert not (tmp_path / "a.txt").exists()  # held back
            raise RuntimeError("the second image failed")
    assert list(tmp_path.iterdir()) == []
    with staged_commits():
        for name in ("a.txt", "b.txt"):
            with AtomicFile(tmp_path / name) as atomic:
                atomic.tmp.write_text(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_exclusive_commit_loses_to_a_path_that_appeared(tmp_path):
    """Two writers of one path without --overwrite: the second commit fails and its staged
    companions are removed again, the first writer's file stays."""
    with pytest.raises(SegkitError, match="dup.csv: appeared while segkit was writing it"):
        with staged_commits():
            with AtomicFile(tmp_path / "mine.tif") as mine:
                mine.tmp.write_text("mine")
            with AtomicFile(tmp_path / "dup.csv") as ours:
                ours.tmp.write_text("ours")
            (tmp_path / "dup.csv").write_text("theirs")  # the other process committed first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.csv"]
    assert (tmp_path / "dup.csv").read_text() == "theirs"


# ------------------------------------------------------------------ slow: real processes killed mid-work


def _big_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (1500, 1500), dtype=np.uint8), tile=(256, 256))
    return path


def _start_infer(trained: Path, image: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "segkit.cli", "infer", "--run", str(trained), "--tta", "d4",
               "--rle", str(out), *extra, str(image)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read().decode()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_infer_killed_mid_write_then_next_start_leaves_no_temp(tmp_path, trained, project, signum):
    out = tmp_path / "out"
    out.mkdir()
    process = _start_infer(trained, _big_image(tmp_path / "big.tif"), out / "sub.csv")
    _wait_for(lambda: temps(out), process)  # the RLE writer's temporary file: prediction has started
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0].decode()
    if signum == signal.SIGTERM:
        assert process.returncode == 143, output
        assert output.strip().splitlines()[-1] == "interrupted (SIGTERM); outputs not written, checkpoints kept"
        assert list(out.iterdir()) == []
    else:
        assert process.returncode == -signal.SIGKILL and temps(out)  # what a hard kill leaves
    result = CliRunner().invoke(cli, ["infer", "--run", str(trained), "--rle", str(out / "small.csv"),
                                      str(project / "img0.tif")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["small.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_train_killed_mid_run_then_resume_leaves_no_temp(tmp_path, signum):
    from conftest import write_tiny_project

    root = write_tiny_project(tmp_path / "p", train={"epochs": 3})
    command = [sys.executable, "-m", "segkit.cli", "train", "--config", str(root / "tiny.yaml"), "--name", "r"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = root / "runs" / "r"
    _wait_for(lambda: (run / "checkpoints" / "epoch_0001.pt").exists(), process)
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0].decode()
    info = json.loads((run / "run.json").read_text())
    if signum == signal.SIGTERM:
        assert process.returncode == 143, output
        assert "interrupted (SIGTERM)" in output and "Traceback" not in output
        assert info["status"] == "interrupted"
    else:
        assert process.returncode == -signal.SIGKILL and info["status"] == "running"
    assert (run / "checkpoints" / "epoch_0001.pt").exists()
    (run / "checkpoints" / f".epoch_0009.pt.{dead_pid()}.x1.tmp").write_bytes(b"as SIGKILL leaves it")
    result = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert temps(root) == [] and json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_two_concurrent_infers_to_one_path_exactly_one_wins(tmp_path, trained):
    image = _big_image(tmp_path / "big.tif")
    out = tmp_path / "dup.csv"
    processes = [_start_infer(trained, image, out) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes == [0, 1], outputs
    loser = outputs[[p.returncode for p in processes].index(1)]
    assert "dup.csv" in loser and ("appeared while segkit was writing it" in loser or "exists" in loser), loser
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "dup.csv"]
