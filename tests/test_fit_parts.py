"""The parts of a training stage as fit builds them: the model on the device it is given (torch's
meta device stands in for a GPU: tensors with shapes and no data) in the memory layout asked for,
encoder freezing seen by the optimizer, and SyncBatchNorm only where DDP runs on GPUs (a CUDA
device object needs no GPU to be named)."""

import pytest
import torch
from torch import nn

from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError
from segkit.train import fit
from segkit.train import from_config as fc
from conftest import write_tiny_project


def _stage(root, device, **sets):
    config = fc.with_fov(load_config(root / "tiny.yaml", overrides=[f"{k}={v}" for k, v in sets.items()]))
    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    return config, fit._build(config, data, fc.preprocess_for(config, data), torch.device(device), None, 1, 0)


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
