"""train_one_epoch's paths a plain CPU run skips: the progress lines a user reads, DDP's deferred
all-reduce inside an accumulation group (a real one-process gloo group), the fp16 GradScaler's
unscale-then-clip and skipped steps (torch's CPU GradScaler), and the gradient and memory-format
housekeeping around the steps."""

import copy
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from segkit.models.losses import create_loss
from segkit.train.ema import ModelEma
from segkit.train.loop import train_one_epoch
from test_loop import _batch, _net


def _loss():
    return create_loss(["bce"], classes=1)


def _run(model, loader, opt, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("channels_last", False)
    return train_one_epoch(model, loader, _loss(), opt, device="cpu", **kw)


def _sgd(model, lr=0.5):
    return torch.optim.SGD(model.parameters(), lr=lr)


def _loss_of(model, batch):
    with torch.no_grad():
        return float(_loss()(model(batch["image"]), batch["mask"]))


# ---- progress ----------------------------------------------------------------------------------

def test_progress_lines_name_the_epoch_count_batches_and_show_the_running_mean_loss(monkeypatch, capsys):
    """Off a terminal, one line per update here (SEGKIT_PROGRESS_SECONDS=0). The loss shown is the
    running per-image mean (read a step late, so it appears while the next batch runs; the closing
    line has the epoch's mean), and lr is the optimizer's."""
    monkeypatch.setenv("SEGKIT_PROGRESS_SECONDS", "0")
    model = _net()
    batches = [_batch(n=n, seed=i) for i, n in enumerate((2, 4, 1, 3))]
    losses = [_loss_of(model, b) for b in batches]  # lr 0: the model never changes
    _run(model, batches, _sgd(model, lr=0.0), progress=True, desc="epoch 2/5")
    lines = capsys.readouterr().err.strip().splitlines()
    counts = [line.split(":")[1].split(" batches")[0].strip() for line in lines]
    assert counts[0] == "1/4" and counts[-1] == "4/4" and "2/4" in counts
    assert all(line.startswith("epoch 2/5: ") for line in lines)
    assert "(25%)" in lines[0] and lines[-1].endswith(lines[-1].split(", done in ")[-1]) and ", done in " in lines[-1]
    shown = {}  # the loss on the last line of each batch count
    for line, count in zip(lines, counts):
        if ", loss " in line:
            shown[count] = line.split(", loss ")[1].split(",")[0]
    images = [2, 4, 1, 3]
    means = [sum(l * n for l, n in zip(losses[:k], images[:k])) / sum(images[:k]) for k in (1, 2, 3, 4)]
    assert shown == {f"{k + 1}/4": f"{m:.4f}" for k, m in enumerate(means)}
    assert all(", lr 0.00e+00" in line for line in lines if ", loss " in line)


def test_no_progress_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("SEGKIT_PROGRESS_SECONDS", "0")
    model = _net()
    _run(model, [_batch(), _batch(seed=1)], _sgd(model), progress=False)
    assert capsys.readouterr().err == ""


# ---- DDP: one all-reduce per accumulation group ------------------------------------------------

@pytest.fixture
def gloo_group(tmp_path):
    """A real one-process gloo process group, torn down after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _counting_ddp(model):
    """DDP around ``model`` whose all-reduces are counted by a communication hook."""
    ddp = nn.parallel.DistributedDataParallel(model)
    calls = []

    def hook(state, bucket):
        calls.append(bucket.index())
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])

    ddp.register_comm_hook(None, hook)
    return ddp, calls


@pytest.mark.parametrize("lengthless, expected_reduces", [(False, 2), (True, 6)])
def test_ddp_reduces_gradients_once_per_accumulation_group(gloo_group, lengthless, expected_reduces):
    """6 batches, accumulate=3: with len() the first two batches of each group skip the all-reduce
    (no_sync), so 2 reduces; without len() a short last group could step on unreduced gradients,
    so every batch reduces. Either way the weights equal a plain model's."""
    batches = [_batch(seed=i) for i in range(6)]
    ddp, calls = _counting_ddp(_net())
    out = _run(ddp, iter(batches) if lengthless else batches, _sgd(ddp), accumulate=3)
    assert out["steps"] == 2 and len(calls) == expected_reduces
    plain = _net()
    _run(plain, batches, _sgd(plain), accumulate=3)
    for a, b in zip(ddp.module.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)


def test_ddp_without_accumulation_reduces_every_batch(gloo_group):
    ddp, calls = _counting_ddp(_net())
    _run(ddp, [_batch(seed=i) for i in range(3)], _sgd(ddp))
    assert len(calls) == 3


# ---- the fp16 GradScaler, on torch's CPU scaler ------------------------------------------------

def test_the_scaler_unscales_before_clipping():
    """clip is in true gradient units: a scaled run with clip equals an unscaled run with clip."""
    batches = [_batch(seed=i) for i in range(2)]
    scaled, plain = _net(), _net()
    _run(scaled, batches, _sgd(scaled), clip=1e-3, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    _run(plain, batches, _sgd(plain), clip=1e-3)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(scaled.parameters(), _net().parameters()))


@pytest.mark.parametrize("clip", [None, 1.0])
def test_a_step_the_scaler_skips_moves_neither_weights_nor_schedule_nor_ema(clip):
    """Scaled gradients that overflow: the step is skipped, the scale backs off,
    the scheduler and the EMA stay where they were, and the step still counts."""
    model = _net()
    before = copy.deepcopy(model)
    opt = _sgd(model)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ema = ModelEma(model, decay=0.5)
    ema_before = copy.deepcopy(ema.module.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    loud = _batch()
    loud["image"] *= 1e10  # a finite loss whose scaled gradients pass float32's range
    out = _run(model, [loud], opt, scaler=scaler, scheduler=scheduler, ema=ema, clip=clip)
    assert out["steps"] == 1 and math.isfinite(out["loss"]) and scaler.get_scale() == 2.0**99  # backed off by half
    assert scheduler.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.5
    for a, b in zip(model.parameters(), before.parameters()):
        assert torch.equal(a, b)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, ema_before[key])
    out = _run(model, [_batch()], opt, scaler=torch.amp.GradScaler("cpu", init_scale=2.0), scheduler=scheduler,
               ema=ema)
    assert scheduler.last_epoch == 1 and opt.param_groups[0]["lr"] == 0.25
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))


# ---- gradients and memory format around the steps ------------------------------------------------

def test_stale_gradients_are_cleared_before_the_first_step_and_freed_after_each():
    batches = [_batch(seed=i) for i in range(2)]
    stale, clean = _net(), _net()
    for p in stale.parameters():
        p.grad = torch.ones_like(p)
    _run(stale, batches, _sgd(stale))
    _run(clean, batches, _sgd(clean))
    for a, b in zip(stale.parameters(), clean.parameters()):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in stale.parameters())  # set_to_none: no gradient memory held between steps


def test_channels_last_puts_the_weights_and_each_batch_in_channels_last():
    model = _net()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    _run(model, [_batch(), _batch(seed=1)], _sgd(model), channels_last=True)
    assert seen == [True, True]
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    off = _net()
    seen.clear()
    off.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    _run(off, [_batch()], _sgd(off), channels_last=False)
    assert seen == [False] and not off[0].weight.is_contiguous(memory_format=torch.channels_last)
