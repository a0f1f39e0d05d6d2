"""Exact resume: a `segkit train` subprocess killed (SIGKILL) mid-epoch 2 of 3, then `--resume`,
ends with the metrics and weights of the uninterrupted run with the same seed."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import stop_training_at_epoch
from test_fit import info, make_project, records

from segkit.cli import cli
from segkit.data.preprocess import Preprocess
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError
from segkit.runs.checkpoint import average_state_dicts, run_checkpoints
from segkit.runs.rundir import append_jsonl, read_jsonl, truncate_jsonl
from segkit.train import from_config as fc
from segkit.train.validate import validate

# EMA, the weight average of the last epochs, early-stopping state, augmentation and a warm-up +
# cosine schedule all have to resume exactly (swa_epochs 3: the interrupt lands inside the window)
TRAIN = {"epochs": 3, "windows_per_epoch": 8, "ema": 0.8, "early_stop": 5, "warmup_steps": 2, "swa_epochs": 3}


def _without_time(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")} for row in rows]


def _kill_mid_epoch_two(project, name):
    """Start `segkit train` in a subprocess and SIGKILL it as soon as epoch 1 is reported (after its checkpoint).
    A pause here let a quiet machine finish epoch 2's short loop before the kill."""
    command = [sys.executable, "-m", "segkit.cli", "train", "--config", str(project / "tiny.yaml"), "--name", name]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch 1:"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.stdout.close()
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)


@pytest.fixture(scope="module")
def straight(module_tmp):
    """The uninterrupted reference run."""
    project = make_project(module_tmp("resume"), **TRAIN)
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "straight"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return project / "runs" / "straight"


def _resume_and_compare(run_dir, straight, after_epoch):
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"resuming {run_dir} after epoch {after_epoch}" in result.output

    assert _without_time(records(run_dir)) == _without_time(records(straight))
    assert [r["epoch"] for r in records(run_dir)] == [1, 2, 3]
    assert info(run_dir)["status"] == "finished" and info(run_dir)["best_epoch"] == info(straight)["best_epoch"]
    a = torch.load(run_dir / "checkpoints" / "epoch_0003.pt", weights_only=True)
    b = torch.load(straight / "checkpoints" / "epoch_0003.pt", weights_only=True)
    for key in ("model", "train_model"):  # EMA weights and raw weights, bit for bit
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["early_stop"] == b["early_stop"] and a["best"] == b["best"]
    swa_a, swa_b = (torch.load(r / "checkpoints" / "swa.pt", weights_only=True) for r in (run_dir, straight))
    assert all(torch.equal(swa_a["model"][k], swa_b["model"][k]) for k in swa_b["model"])
    assert swa_a["swa"] == swa_b["swa"] == info(straight)["swa"]

    # finished now: a second resume is refused in one line
    again = CliRunner().invoke(cli, ["train", "--resume", str(run_dir)])
    assert again.exit_code == 1 and "run has finished; nothing to resume" in again.output


def test_resume_after_an_interrupt_mid_epoch_matches_the_uninterrupted_run(straight, monkeypatch):
    """In-process: Ctrl-C (KeyboardInterrupt) after the first batch of epoch 2."""
    import segkit.train.fit as fit_module

    real = fit_module.train_one_epoch

    def interrupted(model, loader, *args, **kwargs):
        if loader.dataset.epoch == 2:
            class Stop:  # one real batch trains, then the interrupt lands
                def __len__(self):
                    return len(loader)

                def __iter__(self):
                    yield next(iter(loader))
                    raise KeyboardInterrupt

            return real(model, Stop(), *args, **kwargs)
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", interrupted)
    project = straight.parent.parent
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "ctrl_c"])
    run_dir = project / "runs" / "ctrl_c"
    assert result.exit_code == 130 and "interrupted" in result.output
    assert info(run_dir)["status"] == "interrupted" and info(run_dir)["error"] == "KeyboardInterrupt"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["epoch_0001.pt"]
    monkeypatch.setattr(fit_module, "train_one_epoch", real)
    _resume_and_compare(run_dir, straight, 1)


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_the_uninterrupted_run(straight):
    project = straight.parent.parent
    _kill_mid_epoch_two(project, "killed")
    killed = project / "runs" / "killed"
    assert info(killed)["status"] == "running"  # the process died without a word
    assert sorted(p.name for p in (killed / "checkpoints").glob("*.pt")) == ["epoch_0001.pt"]  # mid-epoch 2
    # the kill may land between epoch 2's record and its checkpoint: resume drops records past the checkpoint
    assert [r["epoch"] for r in records(killed)] in ([1], [1, 2])
    _resume_and_compare(killed, straight, 1)


def test_records_past_the_last_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (1, 2, 3):
        append_jsonl(path, {"epoch": epoch, "train_loss": 1.0 / epoch})
    truncate_jsonl(path, 2)
    assert read_jsonl(path) == [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]


def _validation_dice(run_dir, weights) -> float:
    """The run's validation Dice of ``weights``, computed here from the run's own config and rows."""
    config = load_config(run_dir / "config.yaml")
    data, preprocess = fc.training_data(config), Preprocess.load(run_dir / "preprocess.json")
    model = fc.build_model(config, preprocess.in_channels)
    model.load_state_dict(weights)
    return validate([(model, 1.0)], data.val_pairs, preprocess, fc.validation_settings(config),
                    torch.device("cpu"))["dice"]


def test_weight_average_is_the_mean_of_the_last_epochs_with_batchnorm_recomputed(straight):
    """swa.pt (train.swa_epochs 3) holds the mean of the three epochs' validated (EMA) weights."""
    states = [torch.load(straight / "checkpoints" / f"epoch_{e:04d}.pt", weights_only=True)["model"] for e in (1, 2, 3)]
    swa = torch.load(straight / "checkpoints" / "swa.pt", weights_only=True)
    mean = average_state_dicts(states)
    params = [k for k in mean if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) > 10
    for key in params:
        stacked = torch.stack([s[key] for s in states]).double()
        assert torch.allclose(swa["model"][key].double(), stacked.mean(0), atol=1e-6), key
    assert not torch.equal(states[0]["encoder.conv1.weight"], states[2]["encoder.conv1.weight"])
    # BatchNorm statistics were recomputed for the averaged weights, not copied from the last epoch
    assert not torch.allclose(swa["model"]["encoder.bn1.running_mean"], states[2]["encoder.bn1.running_mean"])
    last = torch.load(straight / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert records(straight)[-1]["val_dice"] == pytest.approx(_validation_dice(straight, last["model"]), abs=1e-9)
    record = info(straight)["swa"]  # above: an epoch validates its EMA weights (train.ema 0.8), checkpointed as "model"
    assert record["epochs"] == [1, 3] and record["count"] == 3
    assert record["val_dice"] == pytest.approx(_validation_dice(straight, swa["model"]), abs=1e-9)
    assert run_checkpoints(straight, "swa") == [straight / "checkpoints" / "swa.pt"]
    (straight / "checkpoints" / "swa.pt").rename(straight / "swa.bak")
    try:
        with pytest.raises(SegkitError, match="no weight average"):
            run_checkpoints(straight, "swa")
    finally:
        (straight / "swa.bak").rename(straight / "checkpoints" / "swa.pt")


def test_a_resumed_run_keeps_the_best_epoch_it_had(straight, monkeypatch):
    """The best so far travels in the checkpoint: a run stopped after epoch 1, whose epoch 1 is made
    to have scored a Dice of 2 (beyond any later epoch), still names epoch 1 its best after --resume,
    and train.keep_last 1 keeps its checkpoint."""
    restore = stop_training_at_epoch(monkeypatch, 2)
    project = straight.parent.parent
    assert CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "best1", "--set",
                                    "train.keep_last=1", "--set", "train.swa_epochs=0"]).exit_code == 130
    restore()
    run_dir = project / "runs" / "best1"
    path = run_dir / "checkpoints" / "epoch_0001.pt"
    state = torch.load(path, weights_only=True)
    state["best"] = {"epoch": 1, "value": 2.0, "metric": "val_dice"}
    state["early_stop"]["best"] = 2.0
    torch.save(state, path)
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert info(run_dir)["best_epoch"] == 1 and info(run_dir)["last_epoch"] == 3
    assert "best val dice 2.0000 at epoch 1" in result.output
    # keep_last 1 prunes epoch 2 but never the best epoch
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0003.pt"]
    last = torch.load(run_dir / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert last["best"]["epoch"] == 1 and last["metrics"] == records(run_dir)[-1]
