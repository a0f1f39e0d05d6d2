"""`torchrun --nproc_per_node=2 -m segkit.cli train` on CPU (gloo): one run directory written by
rank 0 only, distinct windows per rank, and both ranks ending with identical weights."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_digits_cls_config
from test_fit import info, make_project, records


def _torchrun() -> list[str]:
    """torchrun of this interpreter: `python -m torch.distributed.run` is torchrun, and a `torchrun` script
    found elsewhere on PATH may belong to another environment (another segkit)."""
    return [sys.executable, "-m", "torch.distributed.run"]


def test_two_gloo_ranks_train_one_run(tmp_path):
    project = make_project(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "segkit.cli", "train",
               "--config", str(project / "tiny.yaml"), "--device", "cpu", "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    runs = list((project / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks agreed on rank 0's (timestamped) name
    run_dir = runs[0]
    record = info(run_dir)
    assert record["status"] == "finished"
    ddp = record["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert ddp["windows_per_rank"] == 4  # 8 windows per epoch split across 2 ranks
    assert ddp["weights_identical"] is True  # checked by gathering every rank's weight digest
    assert [r["epoch"] for r in records(run_dir)] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_dice"] <= 1 for r in records(run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    log = done.stdout + done.stderr
    assert f"run {run_dir}  (train, fov " in log and " on 2 ranks (gloo)" in log  # the log names the DDP run
    assert "ranks ended with different weights" not in log  # warned only when the digests differ
    assert done.stdout.count("epoch 1:") == 1 and done.stdout.count("done: ") == 1  # rank 0 speaks

    from segkit.models.factory import create_model
    from segkit.train.stage import weights_digest

    model = create_model("Unet", "resnet18", None, in_channels=1, classes=1)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "epoch_0002.pt", weights_only=True)["model"])
    assert weights_digest(model) == ddp["weights_sha1"]  # rank 0's final weights are the ones saved


def test_ranks_draw_distinct_windows(tmp_path):
    from segkit.data.dataset import RandomWindowDataset
    from segkit.ground.config import load_config
    from segkit.train.from_config import preprocess_for, training_data

    project = make_project(tmp_path)
    config = load_config(project / "tiny.yaml")
    data = training_data(config)
    preprocess = preprocess_for(config, data, seed=0)
    ranks = [RandomWindowDataset(data.train_pairs, data.sampler, size=32, length=4, preprocess=preprocess, seed=1,
                                 rank=r) for r in (0, 1)]
    for dataset in ranks:
        dataset.set_epoch(1)
    windows = [[dataset.read(i)[2] for i in range(4)] for dataset in ranks]
    assert not set(windows[0]) & set(windows[1])
    assert windows[0] == [ranks[0].read(i)[2] for i in range(4)]  # a pure function of (seed, epoch, rank, index)


@pytest.mark.slow  # ~35 s; the DDP engine is covered by the seg test above, the cls path by test_cls_cli
def test_two_gloo_ranks_train_one_cls_run(digits, tmp_path):
    """--task cls through the same DDP engine: one run directory, the rows split across the ranks, identical weights."""
    write_digits_cls_config(digits, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "segkit.cli", "train",
               "--config", str(tmp_path / "cls.yaml"), "--device", "cpu", "--name", "ddp_cls"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp_cls"
    record = info(run_dir)
    assert record["status"] == "finished" and list((tmp_path / "runs").iterdir()) == [run_dir]
    ddp = record["ddp"]
    assert ddp["world_size"] == 2 and ddp["weights_identical"] is True
    assert ddp["windows_per_rank"] == 45 // 2  # 45 training rows (3 of 4 folds of 60) split evenly across 2 ranks
    (epoch,) = records(run_dir)
    assert "val_f1" in epoch and 0 <= epoch["val_f1"] <= 1
