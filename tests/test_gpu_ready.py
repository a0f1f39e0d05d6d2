"""The CUDA paths checked without a GPU.

Device placement: PyTorch's ``meta`` device holds no data and refuses to mix with CPU tensors, so
a training step or a prediction run with the model on ``meta`` fails with a device mismatch at any
loss weight, constant or generator left on the CPU, and otherwise runs until its first copy to the
host (``Cannot copy out of meta tensor``). The tests assert that this first copy is the planned
one: the late loss check of the training loop, a finished strip of the predictor, the class
logits at the end of the classifier.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_tiny_project
from segkit.ground.config import load_config
from segkit.models.losses import create_task_loss
from segkit.models.target_loss import TargetLoss
from segkit.train import from_config as fc

META = torch.device("meta")


def _first_host_copy(call) -> str:
    """Run ``call`` on meta tensors; it must stop at a copy to the host. Returns the function that copied."""
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor") as info:
        call()
    return info.traceback[-1].name


# --- loss weights move with the loss (one case per loss with weights, per task) ---------------------

WEIGHTED = {
    "seg soft_bce pos_weight": ("seg", [{"name": "soft_bce", "pos_weight": 3.0}], 1, None),
    "seg multiclass soft_bce pos_weight": ("seg", [{"name": "soft_bce", "pos_weight": [1.0, 2.0, 4.0]}], 3, None),
    "cls ce class_weights": ("cls", [{"name": "ce", "class_weights": [1.0, 2.0, 3.0]}], 3, None),
    "cls focal class_weights": ("cls", [{"name": "focal", "class_weights": [1.0, 2.0, 3.0]}], 3, None),
    "cls asymmetric class_weights": ("cls", [{"name": "asymmetric", "class_weights": [1.0, 2.0, 3.0]}], 3, None),
    "cls bce pos_weight": ("cls", [{"name": "bce", "pos_weight": [1.0, 2.0, 3.0]}], 3, None),
    "seg+cls both weighted": ("seg+cls", [{"name": "soft_bce", "pos_weight": 3.0}], 1,
                              [{"name": "ce", "class_weights": [1.0, 4.0]}]),
    "targets soft_bce pos_weight": ("targets", [{"name": "soft_bce", "pos_weight": 3.0}], 3, None),
}


def _loss_and_batch(task, terms, classes, cls_terms):
    """The loss as fit builds it for ``task`` and a matching (logits, target) pair on meta."""
    if task == "targets":
        loss = TargetLoss(terms, ["body", "border", "contact"])
        return loss, torch.zeros(2, 3, 8, 8, device=META), torch.zeros(2, 3, 8, 8, device=META)
    loss = create_task_loss(task, seg_terms=terms, cls_terms=cls_terms or terms, classes=classes, cls_classes=2)
    if task == "cls":
        return loss, torch.zeros(4, classes, device=META), torch.zeros(4, dtype=torch.long, device=META)
    mask = torch.zeros(2, 1, 8, 8, device=META) if classes == 1 else torch.zeros(2, 8, 8, dtype=torch.long, device=META)
    if task == "seg+cls":
        return loss, (torch.zeros(2, 1, 8, 8, device=META), torch.zeros(2, 2, device=META)), \
            (mask, torch.zeros(2, dtype=torch.long, device=META))
    return loss, torch.zeros(2, classes, 8, 8, device=META), mask


@pytest.mark.parametrize("case", list(WEIGHTED))
def test_loss_weights_follow_the_loss_to_the_device(case):
    loss, logits, target = _loss_and_batch(*WEIGHTED[case])
    with pytest.raises(RuntimeError, match="device"):  # the check can fail: on the CPU the weights clash
        loss(logits, target)
    value = loss.to(META)(logits, target)  # what fit._build does: every weight is a buffer that moves
    assert value.device == META


@pytest.fixture(scope="module")
def seg_parts(module_tmp):
    """fit's own _build on the meta device for a seg run with a weighted loss and EMA."""
    from segkit.train.fit import _build

    root = write_tiny_project(module_tmp("meta"),
                              train={"loss": [{"name": "dice"}, {"name": "soft_bce", "pos_weight": 3.0}],
                                     "ema": 0.9, "amp": True})
    config = fc.with_fov(load_config(root / "tiny.yaml"))
    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    preprocess = fc.preprocess_for(config, data, seed=0)
    return config, data, preprocess, _build(config, data, preprocess, META, None, 1, 0)


def test_a_training_step_runs_on_the_device_until_the_late_loss_check(seg_parts):
    from segkit.train.loop import train_one_epoch

    config, _, _, parts = seg_parts
    assert all(t.device == META for t in [*parts.loss_fn.buffers(), *parts.model.parameters(),
                                          *parts.ema.module.parameters()])
    parts.dataset.set_epoch(1)
    where = _first_host_copy(lambda: train_one_epoch(
        parts.model, parts.loader, parts.loss_fn, parts.optimizer, scheduler=parts.scheduler, device=META,
        amp=True, ema=parts.ema, progress=False))
    assert where == "push"  # forward, loss, backward, optimizer, scheduler and EMA ran without reading the device


def test_the_predictor_blends_on_the_device_until_a_strip_is_finished(seg_parts):
    from segkit.train.validate import validate

    config, data, preprocess, parts = seg_parts
    settings = fc.validation_settings(config)
    assert _first_host_copy(lambda: validate([(parts.model, 1.0)], data.val_pairs, preprocess, settings,
                                             META)) == "flush_iter"


def test_the_classifier_stays_on_the_device_until_its_logits_are_complete():
    from segkit.infer.classify import predict_class_logits

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).to(META)
    rows = list(range(5))
    where = _first_host_copy(lambda: predict_class_logits(
        [(model, 1.0)], rows, read=lambda row: np.full((8, 8, 3), row, np.uint8),
        preprocess=lambda a: a.astype(np.float32), tta=[("identity", 0.5), ("hflip", 0.5)], batch_size=2,
        device=META))
    assert where == "predict_class_logits"


def test_mixup_batches_are_mixed_on_the_device(digits, tmp_path):
    """cls with MixUp/CutMix: fit's _build on meta; the mixed targets are made on the batch's device."""
    import yaml

    from segkit.train.fit import _build
    from segkit.train.loop import train_one_epoch

    spec = {"task": "cls", "run": {"runs_dir": str(tmp_path / "runs"), "progress": False},
            "data": {"manifest": str(digits / "train.csv"), "size": 16, "folds": 4, "fold_method": "stratified",
                     "stats_windows": 8},
            "model": {"encoder": "tu-resnet10t"},
            "train": {"epochs": 1, "batch_size": 8, "mixup": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
                      "cls_loss": [{"name": "ce", "class_weights": [1.0 + k for k in range(10)]}]}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(spec))
    config = fc.with_fov(load_config(tmp_path / "cls.yaml"))
    data = fc.training_data(config)
    config = fc.with_classes(config, data)
    preprocess = fc.preprocess_for(config, data, seed=0)
    parts = _build(config, data, preprocess, META, None, 1, 0)
    parts.dataset.set_epoch(1)
    parts.batch_transform.set_epoch(1)
    where = _first_host_copy(lambda: train_one_epoch(
        parts.model, parts.loader, parts.loss_fn, parts.optimizer, scheduler=parts.scheduler, device=META,
        progress=False, batch_transform=parts.batch_transform))
    assert where == "push"


# --- the loader, the EMA, the hardware choices ------------------------------------------------------

def test_the_loader_on_cuda_uses_workers_and_pinned_memory(seg_parts):
    from segkit.runs.device import loader_workers
    from segkit.train.hardware import loader_for

    dataset = seg_parts[3].dataset
    cuda = loader_for(dataset, 4, None, torch.device("cuda", 0))  # a device object needs no GPU
    assert cuda.pin_memory and cuda.num_workers == loader_workers(None, torch.device("cuda"), 1) >= 1
    cpu = loader_for(dataset, 4, None, torch.device("cpu"))
    assert not cpu.pin_memory and cpu.num_workers == 0  # on CPU workers would take the model's cores
    assert loader_for(dataset, 4, 3, torch.device("cuda", 0)).num_workers == 3  # a setting wins
    assert loader_workers(None, torch.device("cuda"), processes=64) == 1  # at least one per GPU process


def test_the_run_says_what_it_chose(trained):
    import json

    hardware = json.loads((trained / "run.json").read_text())["hardware"]
    assert hardware["device"] == "cpu" and hardware["precision"] in ("float32", "bf16")
    assert hardware["workers"] == 0 and hardware["pin_memory"] is False and hardware["cudnn_benchmark"] is False
    assert hardware["infer_batch_size"] == 4  # the project's infer.batch_size


class _PerTensorEma:
    """The EMA update as it was: torch's AveragedModel calling a per-tensor lerp_ (the reference)."""

    def __init__(self, model, decay):
        from torch.optim.swa_utils import AveragedModel

        from segkit.train.ema import ema_decay

        def average(averaged, current, n_averaged):
            weight = 1.0 - ema_decay(decay, int(n_averaged))
            for a, c in zip(averaged, current):
                a.lerp_(c.to(a.device), weight)

        self.averaged = AveragedModel(model, multi_avg_fn=average, use_buffers=False)


def test_foreach_ema_equals_the_per_tensor_update_exactly():
    from segkit.train.ema import ModelEma

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    ours, reference = ModelEma(model, 0.95), _PerTensorEma(model, 0.95)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(25):
        model(torch.randn(4, 3, 12, 12)).square().mean().backward()  # BatchNorm statistics move too
        optimizer.step()
        optimizer.zero_grad()
        ours.update(model)
        reference.averaged.update_parameters(model)
    for a, b in zip(ours.module.state_dict().values(), reference.averaged.module.state_dict().values()):
        assert torch.equal(a, b)
    assert int(ours.averaged.n_averaged) == int(reference.averaged.n_averaged) == 25
    resumed = ModelEma(model, 0.95)
    resumed.load_state_dict(ours.state_dict())
    assert resumed.current_decay() == ours.current_decay()  # the host count comes back with the checkpoint


def test_more_processes_than_gpus_are_refused():
    from segkit.ground.errors import SegkitError
    from segkit.runs.distributed import rank_device

    assert rank_device(1, 2, 2) == torch.device("cuda", 1)
    with pytest.raises(SegkitError, match="3 processes on this machine but 2 CUDA device"):
        rank_device(0, 2, 3)  # rank 2 would share cuda:0 with rank 0
    with pytest.raises(SegkitError, match="--nproc_per_node=0 or fewer"):
        rank_device(0, 0, 1)


def test_validation_restores_the_layout_of_the_model_it_was_given():
    """A model trained without channels_last (DDP's gradient buckets expect its strides) comes back as it was."""
    from segkit.infer.ensemble import EnsemblePredictor

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).train()
    with EnsemblePredictor([(model, 1.0)], "none").prepared(torch.device("cpu")):
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last) and not model.training
    assert model[0].weight.is_contiguous() and model.training


def test_ranks_other_than_0_get_their_own_torch_seed_on_a_fresh_run(tmp_path):
    from segkit.train.fit import _restore

    for rank in (0, 1, 3):
        torch.manual_seed(42)
        assert _restore(None, tmp_path, False, 42, rank) == (1, None)
        assert torch.initial_seed() == 42 + rank  # distinct dropout masks; rank 0 keeps the single-process seed


def test_out_of_gpu_memory_does_not_end_the_study(tmp_path):
    """Fast: every trial runs out of GPU memory before training; each fails alone, the study goes on."""
    pytest.importorskip("optuna")
    from segkit.tune.space import Dimension
    from segkit.tune.optuna import tune

    root = write_tiny_project(tmp_path, infer={"tta": "none"})
    calls = []

    def out_of_memory(config, hooks=()):
        calls.append(config.run.name)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    space = [Dimension("train.lr", low=1e-3, high=1e-2, log=True)]
    result = tune(load_config(root / "tiny.yaml"), space, trials=2, fit=out_of_memory, log=lambda line: None)
    assert [t.state.name for t in result.study.trials] == ["FAIL", "FAIL"] and calls == ["tune-t000", "tune-t001"]
    assert result.best_run is None


@pytest.mark.slow  # ~15 s: trains one tiny run after the failed trial
def test_a_trial_out_of_gpu_memory_fails_alone(tmp_path):
    """tune's fit is a parameter: the first trial runs out of GPU memory at its first step, the second
    trains for real; the study goes on and completes it."""
    pytest.importorskip("optuna")
    from segkit.tune.space import Dimension
    from segkit.tune.optuna import tune
    from segkit.train.fit import fit

    root = write_tiny_project(tmp_path, train={"epochs": 1, "amp": False}, infer={"tta": "none"})
    calls = []

    def fit_or_oom(config, hooks=()):
        calls.append(config.run.name)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fit(config, hooks=hooks)

    lines = []
    space = [Dimension("train.lr", low=1e-3, high=1e-2, log=True)]
    result = tune(load_config(root / "tiny.yaml"), space, trials=2, fit=fit_or_oom, log=lines.append)
    states = [t.state.name for t in result.study.trials]
    assert states == ["FAIL", "COMPLETE"] and len(calls) == 2
    assert any("trial 0: failed: out of GPU memory (CUDA out of memory" in line for line in lines)
