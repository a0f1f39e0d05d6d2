"""`segkit train` / `segkit finetune` stage features through the real CLI on a tiny project."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_tiny_project

from segkit.cli import cli

AUGMENT = {"transform": {"__class_fullname__": "Compose", "transforms": [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "RandomRotate90", "p": 0.5}]}}


def make_project(root: Path, **train) -> Path:
    """The shared tiny project with augmentation, fp32 and no TTA (exact comparisons)."""
    return write_tiny_project(root, data={"augment": AUGMENT}, train={"amp": False, **train},
                              infer={"tta": "none", "epochs": "last:3"})


def run(*args, expect=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def one_line_error(result, message):
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def info(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def load(run_dir, epoch):
    return torch.load(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)


@pytest.fixture(scope="module")
def project(module_tmp):
    return make_project(module_tmp("fit"))


@pytest.fixture(scope="module")
def grandparent(project):
    result = run("train", "--config", project / "tiny.yaml", "--name", "gp")
    assert "done: " in result.output.strip().splitlines()[-1]
    return project / "runs" / "gp"


def test_run_summary_line_and_status(grandparent):
    record = info(grandparent)
    assert record["status"] == "finished" and record["pid"] is None
    assert record["summary"].startswith(f"done: {grandparent}  2 epochs  final loss ")
    assert "best val dice" in record["summary"]
    rows = records(grandparent)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "loss_dice", "loss_soft_bce", "lr", "val_dice", "seconds"} <= set(rows[0])
    assert sorted(p.name for p in (grandparent / "plots").glob("*.png"))


def test_ema_freeze_subset_sgd_cosine_floor_and_early_stopping(project):
    # early_stop_delta 1.0: a Dice can never beat the first epoch's by that much -> stop after 1 + 2 epochs
    run("train", "--config", project / "tiny.yaml", "--name", "ema", "--subset", "0.5", "--epochs", 5,
        "--set", "train.ema=0.5", "--set", "model.freeze_fraction=0.5", "--set", "train.optimizer=sgd",
        "--set", "train.scheduler=cosine", "--set", "train.lr=1e-3",
        "--set", "train.min_lr_ratio=0.1", "--set", "train.momentum=0.8",
        "--set", "train.early_stop=2", "--set", "train.early_stop_delta=1.0", "--set", "train.lr_full_steps=0")
    run_dir = project / "runs" / "ema"
    assert [r["epoch"] for r in records(run_dir)] == [1, 2, 3]
    assert load(run_dir, 3)["early_stop"]["bad_epochs"] == 2
    assert info(run_dir)["status"] == "finished" and info(run_dir)["best_epoch"] == 1
    assert info(run_dir)["summary"].startswith(f"done: {run_dir}  3 epochs")
    first, second = load(run_dir, 1), load(run_dir, 2)
    # the validated (EMA) weights are what "model" holds; the raw ones resume training
    assert set(second["ema"]) == {"n_averaged", "decay"} and int(second["ema"]["n_averaged"]) == 2
    assert second["ema"]["decay"] == 0.5
    moved = [k for k in second["model"] if second["model"][k].is_floating_point()
             and not torch.equal(second["model"][k], second["train_model"][k])]
    assert moved
    # --subset 0.5 of 8 windows at batch 4: one optimizer step per epoch, 5 planned
    assert second["optimizer"]["param_groups"][0]["momentum"] == 0.8
    assert second["scheduler"]["last_epoch"] == 2
    assert records(run_dir)[0]["lr"] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi / 5)))
    # freeze_fraction 0.5: the first half of the encoder tensors never move, the last ones do
    names = [k for k in first["train_model"] if k.startswith("encoder.") and "running" not in k
             and "num_batches" not in k]
    assert torch.equal(first["train_model"][names[0]], second["train_model"][names[0]])
    assert not torch.equal(first["train_model"][names[-1]], second["train_model"][names[-1]])


def test_size_not_accepted_by_the_network_fails_before_anything_is_written(project):
    before = sorted(os.listdir(project / "runs"))
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--size", "40",
                                      "--set", "model.arch=FPN"])
    one_line_error(result, "data.size: 40x40 must be a multiple of 32 for FPN")
    assert sorted(os.listdir(project / "runs")) == before


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_marks_failed(project):
    result = CliRunner().invoke(cli, [
        "train", "--config", str(project / "tiny.yaml"), "--name", "nan", "--set", "train.lr=1e30",
        "--set", "train.windows_per_epoch=4", "--set", "train.scheduler=constant"])
    run_dir = project / "runs" / "nan"
    one_line_error(result, "loss became NaN at step 2")
    assert (f"Error: training: loss became NaN at step 2 (batch 1) (last good checkpoint "
            f"{run_dir / 'checkpoints' / 'epoch_0001.pt'}; run status failed)\n") in result.output
    assert info(run_dir)["status"] == "failed" and "NaN" in info(run_dir)["error"]
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["epoch_0001.pt"]
    assert torch.isfinite(load(run_dir, 1)["model"]["segmentation_head.0.weight"]).all()
    first = CliRunner().invoke(cli, [  # NaN from the first step: a NaN positive-class weight
        "train", "--config", str(project / "tiny.yaml"), "--name", "nan1", "--set",
        "train.loss=[{name: soft_bce, pos_weight: .nan}]"])
    assert first.exit_code == 1 and first.output.endswith(
        "Error: training: loss became NaN at step 1 (batch 1) (no checkpoint was written; run status failed)\n")


def test_finetune_epoch_choice_and_three_stage_lineage(project, grandparent):
    runs = project / "runs"
    run("finetune", "--from", grandparent, "--size", 48, "--epochs", 1, "--epoch", 1, "--name", "parent",
        "--runs-dir", runs)
    parent = runs / "parent"
    assert info(parent)["parent"] == str(grandparent) and info(parent)["parent_epoch"] == 1
    parent_cfg = yaml.safe_load((parent / "config.yaml").read_text())
    assert parent_cfg["data"]["size"] == 48 and parent_cfg["data"]["fov_px"] == 48

    run("finetune", "--from", parent, "--size", 64, "--epochs", 1, "--name", "child", "--runs-dir", runs)
    child = info(runs / "child")
    assert child["parent"] == str(parent) and child["parent_epoch"] == info(parent)["best_epoch"] == 1
    assert child["lineage"] == [
        {"run": str(grandparent), "epoch": 1, "size": 32},
        {"run": str(parent), "epoch": 1, "size": 48},
    ]
    assert [r["epoch"] for r in records(runs / "child")] == [1]


def test_parent_checkpoint_choice(grandparent):
    from segkit.runs.checkpoint import select_checkpoint

    best = info(grandparent)["best_epoch"]
    checkpoints = grandparent / "checkpoints"
    assert select_checkpoint(grandparent, "best") == (checkpoints / f"epoch_{best:04d}.pt", best)
    assert select_checkpoint(grandparent, "last") == (checkpoints / "epoch_0002.pt", 2)
    assert select_checkpoint(grandparent, "1") == (checkpoints / "epoch_0001.pt", 1)


# finetune and resume mistakes (epoch, classes, channels, unknown or finished run): tests/test_bad_inputs.py.


def test_resume_refuses_a_run_that_is_still_running(project, grandparent):
    live = project / "runs" / "live"
    live.mkdir()
    record = dict(info(grandparent), status="running", pid=os.getppid())  # a live process that is not us
    (live / "run.json").write_text(json.dumps(record))
    (live / "config.yaml").write_text((grandparent / "config.yaml").read_text())
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--resume", str(live)])
    one_line_error(result, f"run is still running (pid {os.getppid()})")


def test_tensorboard_logging(project):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        before = sorted(os.listdir(project / "runs"))
        result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--log", "tensorboard"])
        one_line_error(result, "--log tensorboard: the tensorboard package is not installed (pip install tensorboard)")
        assert sorted(os.listdir(project / "runs")) == before
        return
    run("train", "--config", project / "tiny.yaml", "--name", "tb", "--epochs", 1, "--log", "tensorboard")
    assert list((project / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))
