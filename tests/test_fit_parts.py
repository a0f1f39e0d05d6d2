"""The parts of a training stage as fit builds them: the model on the device it is given (torch's
meta device stands in for a GPU: tensors with shapes and no data) in the memory layout asked for,
encoder freezing seen by the optimizer, and SyncBatchNorm only where DDP runs on GPUs (a CUDA
device object needs no GPU to be named)."""

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from segkit.cli import cli
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError
from segkit.train import fit
from segkit.train import from_config as fc
from conftest import write_tiny_project


def _stage(root, device, world=1, **sets):
    config = fc.with_fov(load_config(root / "tiny.yaml", overrides=[f"{k}={v}" for k, v in sets.items()]))
    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    return config, fit._build(config, data, fc.preprocess_for(config, data), torch.device(device), None, world, 0)


@pytest.fixture(scope="module")
def root(module_tmp):
    return write_tiny_project(module_tmp("parts"))


def test_the_model_is_placed_on_the_stage_device_in_the_layout_asked_for(root):
    """(tests/test_gpu_ready.py runs a whole training step of such a stage on the meta device.)"""
    _, parts = _stage(root, "meta")
    assert {p.device.type for p in parts.model.parameters()} == {"meta"}
    assert parts.model.encoder.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _, plain = _stage(root, "meta", **{"train.channels_last": False})
    assert not plain.model.encoder.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_frozen_encoder_is_left_out_of_the_optimizer(root):
    _, parts = _stage(root, "cpu", **{"model.freeze_fraction": 1.0})
    trained = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    encoder = list(parts.model.encoder.parameters())
    assert encoder and not any(p.requires_grad or id(p) in trained for p in encoder)
    assert {id(p) for p in parts.model.decoder.parameters()} <= trained
    _, free = _stage(root, "cpu")
    assert all(p.requires_grad for p in free.model.parameters())


def test_every_stage_setting_reaches_the_part_that_uses_it(root, capsys):
    sets = {"train.ema": 0.97, "train.optimizer": "sgd", "train.momentum": 0.7, "train.weight_decay": 0.001,
            "train.accumulate": 2, "train.epochs": 3, "train.lr": 0.01, "train.lr_full_steps": 8,
            "train.scheduler": "cosine", "train.warmup_steps": 1, "train.min_lr_ratio": 0.1, "train.early_stop": 4,
            "train.early_stop_delta": 0.01, "train.swa_epochs": 3, "data.workers": 1,
            "data.copy_paste": "{p: 1.0, count: [1, 1]}"}
    config, parts = _stage(root, "cpu", **sets)
    assert parts.ema.decay == 0.97 and parts.loader.num_workers == 1
    assert all(torch.equal(a, b) for a, b in zip(parts.ema.module.parameters(), parts.model.parameters()))
    assert len(parts.dataset.augment.copy_paste.bank) > 0  # copy-paste, with objects of the training data
    assert parts.steps_per_epoch == math.ceil(len(parts.loader) / 2)
    steps = parts.steps_per_epoch * 3
    group = parts.optimizer.param_groups[0]
    assert group["momentum"] == 0.7 and group["weight_decay"] == 0.001
    peak = 0.01 * max(1 / 3, steps / 8)  # a run shorter than lr_full_steps starts lower
    assert steps / 8 > 1 / 3  # above the floor: the run's length decides
    assert group["initial_lr"] == pytest.approx(peak)
    assert (f"peak lr {peak:.2g} (train.lr 0.01 scaled for a run of {steps} optimizer steps, fewer than "
            "train.lr_full_steps 8)") in capsys.readouterr().out
    lrs = []
    for _ in range(steps):
        lrs.append(group["lr"])
        parts.optimizer.step()
        parts.scheduler.step()
    assert lrs[0] == pytest.approx(peak / 2) and lrs[1] == pytest.approx(peak)  # one warm-up step, then the peak
    assert group["lr"] == pytest.approx(0.1 * peak)  # cosine down to min_lr_ratio
    early = parts.early
    assert (early.patience, early.mode, early.min_delta) == (4, "max", 0.01)
    assert parts.swa.first_epoch == 1  # the last 3 of 3 epochs
    _, full = _stage(root, "cpu", **{"train.lr": 0.01, "train.lr_full_steps": 0, "train.scheduler": "cosine"})
    assert full.optimizer.param_groups[0]["initial_lr"] == 0.01 and "peak lr" not in capsys.readouterr().out
    assert full.swa is None and full.ema is None and full.early.patience is None


def test_sync_bn_under_ddp_is_refused_before_a_stage_is_built_off_the_gpu(root):
    with pytest.raises(SegkitError, match=r"^train.sync_bn: SyncBatchNorm runs on GPUs only \(this run is on meta\)$"):
        _stage(root, "meta", world=2, **{"train.sync_bn": True})


def test_each_epoch_trains_with_the_stage_settings_and_a_plain_run_averages_its_own_weights(root, monkeypatch):
    """clip, accumulate, the epoch's progress label and its first step number reach every epoch; without
    EMA the weight average (train.swa_epochs) is the mean of the trained weights."""
    import segkit.train.fit as fit_module

    seen, real = [], fit_module.train_one_epoch

    def spy(model, loader, *args, **kwargs):
        seen.append({"batches": len(loader), **{k: kwargs[k] for k in ("clip", "accumulate", "desc", "step_offset")}})
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", spy)
    sets = ["train.clip=0.5", "train.accumulate=2", "train.epochs=2", "train.swa_epochs=2", "train.amp=false"]
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "wired",
                                      *[arg for s in sets for arg in ("--set", s)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    steps = math.ceil(seen[0]["batches"] / 2)
    assert [{k: v for k, v in call.items() if k != "batches"} for call in seen] == [
        {"clip": 0.5, "accumulate": 2, "desc": "epoch 1/2", "step_offset": 0},
        {"clip": 0.5, "accumulate": 2, "desc": "epoch 2/2", "step_offset": steps}]
    run = root / "runs" / "wired" / "checkpoints"
    epochs = [torch.load(run / f"epoch_{e:04d}.pt", weights_only=True)["model"] for e in (1, 2)]
    saved = torch.load(run / "swa.pt", weights_only=True)
    swa = saved["model"]
    assert saved["epoch"] == 2  # the epoch it was made after
    key = "encoder.layer1.0.conv1.weight"
    torch.testing.assert_close(swa[key], (epochs[0][key] + epochs[1][key]) / 2)
    average = json.loads((root / "runs" / "wired" / "run.json").read_text())["swa"]
    assert f"weight average of epochs 1-2: val dice {average['val_dice']:.4f}  (checkpoints/swa.pt)\n" in result.output


def _bn_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


@pytest.mark.parametrize("sync_bn, world, synced", [(True, 2, True), (True, 1, False), (False, 2, False)])
def test_batchnorm_is_synchronised_only_for_sync_bn_under_ddp(sync_bn, world, synced):
    model = fit._sync_batchnorm(_bn_net(), sync_bn, world, torch.device("cuda"))
    assert isinstance(model[1], nn.SyncBatchNorm) is synced
    assert isinstance(model[1], nn.BatchNorm2d) is not synced


def test_sync_bn_under_ddp_on_cpu_is_a_one_line_error():
    with pytest.raises(SegkitError, match=r"^train.sync_bn: SyncBatchNorm runs on GPUs only \(this run is on cpu\)$"):
        fit._sync_batchnorm(_bn_net(), True, 2, torch.device("cpu"))
    assert isinstance(fit._sync_batchnorm(_bn_net(), True, 1, torch.device("cpu"))[1], nn.BatchNorm2d)
