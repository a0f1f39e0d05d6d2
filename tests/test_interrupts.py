"""Fast, in-process versions of the slow real-subprocess fault tests (tests/test_faults.py,
tests/test_resume.py keep those): SIGTERM to a training run, a run whose process was killed,
and two infers racing for one output path. Each goes through the real commands; only the
moment of the fault is arranged (a signal sent from inside the epoch, the state SIGKILL
leaves, the second infer run while the first is between prediction and commit).
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import write_tiny_project

from segkit.cli import cli

SIGTERM_LINE = "interrupted (SIGTERM); outputs not written, checkpoints kept"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def info(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")} for row in rows]


def weights(run_dir, epoch):
    return torch.load(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)["model"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def straight(module_tmp):
    """An uninterrupted 2-epoch run (fp32, one step per epoch) to compare the resumed ones with."""
    root = write_tiny_project(module_tmp("interrupts"), train={"amp": False, "windows_per_epoch": 4},
                              infer={"tta": "none"})
    result = invoke("train", "--config", root / "tiny.yaml", "--name", "straight")
    assert result.exit_code == 0, result.output
    return root / "runs" / "straight"


def _sigterm_in_epoch_two(monkeypatch, straight, name):
    """`segkit train` that receives SIGTERM during its second epoch (from inside the process)."""
    import segkit.train.fit as fit_module

    real = fit_module.train_one_epoch

    def terminated(model, loader, *args, **kwargs):
        if loader.dataset.epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", terminated)
    result = invoke("train", "--config", straight.parent.parent / "tiny.yaml", "--name", name)
    monkeypatch.setattr(fit_module, "train_one_epoch", real)
    return result, straight.parent / name


def _resume_matches(run_dir, straight):
    result = invoke("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert f"resuming {run_dir} after epoch 1" in result.output
    assert records(run_dir) == records(straight) and info(run_dir)["status"] == "finished"
    a, b = weights(run_dir, 2), weights(straight, 2)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_sigterm_to_train_is_one_line_143_and_the_run_resumes(monkeypatch, straight):
    result, run_dir = _sigterm_in_epoch_two(monkeypatch, straight, "term")
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1] == SIGTERM_LINE and "Traceback" not in result.output
    assert info(run_dir)["status"] == "interrupted"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt"]
    _resume_matches(run_dir, straight)


def test_a_run_whose_process_was_killed_resumes(monkeypatch, straight):
    """What SIGKILL leaves: run.json still "running" with the dead pid, a half-written checkpoint
    temp, and (killed between the two writes) a metrics row past the last checkpoint."""
    _, run_dir = _sigterm_in_epoch_two(monkeypatch, straight, "killed")
    record = dict(info(run_dir), status="running", pid=dead_pid())
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "checkpoints" / f".epoch_0002.pt.{dead_pid()}.k1.tmp").write_bytes(b"half a checkpoint")
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(dict(records(straight)[1], train_loss=99.0)) + "\n")
    _resume_matches(run_dir, straight)
    assert not list(run_dir.rglob("*.tmp"))


def test_two_infers_to_one_path_exactly_one_wins(monkeypatch, trained, project, tmp_path):
    """The second infer starts and finishes while the first is between prediction and commit
    (what two concurrent processes do, ordered): the first one fails in one line, the winner's
    file stays untouched, nothing else is left."""
    import segkit.infer.run as run

    real, out, seen = run.post_process, tmp_path / "dup.csv", {}
    args = ["infer", "--run", trained, "--rle", out, "--tta", "none", project / "img0.tif"]

    def other_process_commits_first(*a, **kw):
        if not seen:
            seen["started"] = True  # the second infer's own post_process runs unpatched
            seen["result"] = invoke(*args)
            seen["bytes"] = out.read_bytes()
        return real(*a, **kw)

    monkeypatch.setattr(run, "post_process", other_process_commits_first)
    loser = invoke(*args)
    assert seen["result"].exit_code == 0, seen["result"].output
    assert loser.exit_code == 1, loser.output
    assert loser.output.strip() == (f"Error: {out}: appeared while segkit was writing it (another process?); "
                                    "not replaced (use --overwrite)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.csv"] and out.read_bytes() == seen["bytes"]
