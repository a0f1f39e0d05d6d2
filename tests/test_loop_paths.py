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


@pytest.mark.parametrize("n, lengthless, expected_reduces", [(6, False, 2), (5, False, 2), (6, True, 6)])
def test_ddp_reduces_gradients_once_per_accumulation_group(gloo_group, n, lengthless, expected_reduces):
    """accumulate=3: with len() only the last batch of each group all-reduces (the others run
    under no_sync), a short last group's too (5 batches: 2 reduces); without len() a short last
    group could step on unreduced gradients, so every batch reduces. The weights equal a plain model's."""
    batches = [_batch(seed=i) for i in range(n)]
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


# ---- loaders without len(), seg+cls tuples, batch transforms, defaults --------------------------

@pytest.mark.parametrize("clip, scale", [(None, None), (1e-3, None), (None, 1024.0)])
def test_without_len_the_last_short_group_steps_like_a_sized_loaders(clip, scale):
    """5 batches, accumulate=3, no len(): the 2-batch group found at the end steps like one of a
    sized loader (a mean over its own 2 batches, clipped, unscaled, scheduled, averaged into the EMA)."""
    batches = [_batch(seed=i) for i in range(5)]
    results = []
    for loader in (iter(batches), batches):
        model = _net()
        opt = _sgd(model)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        ema = ModelEma(model, decay=0.5)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        out = _run(model, loader, opt, accumulate=3, clip=clip, scheduler=scheduler, ema=ema, scaler=scaler)
        assert out["steps"] == 2 and scheduler.last_epoch == 2
        results.append((model, ema))
    (lengthless, ema_a), (sized, ema_b) = results
    for a, b in zip(lengthless.parameters(), sized.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(ema_a.module.parameters(), ema_b.module.parameters()):
        torch.testing.assert_close(a, b)


def test_a_nan_in_the_last_short_group_of_a_lengthless_loader_names_its_step_and_batch():
    batches = [_batch(seed=i) for i in range(5)]
    batches[4]["image"][0, 0, 0, 0] = float("nan")
    model = _net()
    with pytest.raises(Exception, match=r"^training: loss became NaN at step 2 \(batch 5\); last good checkpoint kept$"):
        _run(model, iter(batches), _sgd(model), accumulate=3, step_offset=0)
    batches[4] = _batch(seed=4)
    batches[1]["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(Exception, match=r"^training: loss became NaN at step 11 \(batch 3\); "):
        _run(_net(), batches, _sgd(model), accumulate=3, step_offset=10)


def test_the_closing_line_of_a_lengthless_epoch_shows_its_mean_loss_and_lr(monkeypatch, capsys):
    monkeypatch.setenv("SEGKIT_PROGRESS_SECONDS", "0")
    model = _net()
    batches = [_batch(n=n, seed=i) for i, n in enumerate((3, 1, 2))]  # the last group is one short batch
    mean = sum(_loss_of(model, b) * n for b, n in zip(batches, (3, 1, 2))) / 6
    _run(model, iter(batches), _sgd(model, lr=0.0), accumulate=2, progress=True, desc="e")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("e: 3 batches, ") and f", loss {mean:.4f}, lr 0.00e+00, done in " in last


def test_defaults_show_progress_as_train_and_use_channels_last(monkeypatch, capsys):
    monkeypatch.setenv("SEGKIT_PROGRESS_SECONDS", "0")
    model = _net()
    train_one_epoch(model, [_batch()], _loss(), _sgd(model), device="cpu")
    assert capsys.readouterr().err.startswith("train: 1/1 batches")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_the_epoch_loss_is_the_exact_per_image_mean_of_the_batch_losses():
    """Summed in float64 on the device: equal to the mean a user computes, to 1e-12."""
    model = _net()
    batches = [_batch(n=n, seed=i) for i, n in enumerate((3, 5, 2, 7, 1))]
    losses = [_loss_of(model, b) for b in batches]
    out = _run(model, batches, _sgd(model, lr=0.0))
    assert out["loss"] == pytest.approx(sum(l * n for l, n in zip(losses, (3, 5, 2, 7, 1))) / 18, rel=1e-12, abs=0)


def test_per_term_means_of_a_single_image_and_a_plain_torch_loss():
    model = _net()
    one = _batch(n=1)
    loss = create_loss(["dice", "bce"], classes=1)
    with torch.no_grad():
        loss(model(one["image"]), one["mask"])
        expected = {f"loss_{k}": float(v) for k, v in loss.last.items()}
    out = train_one_epoch(copy.deepcopy(model), [one], loss, _sgd(model), device="cpu", progress=False,
                          channels_last=False)
    assert out["terms"] == pytest.approx(expected, rel=1e-6)
    plain = train_one_epoch(model, [one], lambda logits, mask: nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], mask.float()), _sgd(model), device="cpu", progress=False)
    assert "terms" not in plain and plain["images"] == 1


class _SegCls(nn.Module):
    """A mask head and a class head on one trunk: returns (mask logits, class logits)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.mask, self.cls = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 1), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.mask(h).to(torch.float16), self.cls(h.mean((2, 3))).to(torch.float16)


def test_seg_cls_outputs_and_targets_travel_as_pairs_and_are_scored_in_float32():
    seen = []

    def loss_fn(logits, targets):
        seen.append(tuple(t.dtype for t in logits))
        (mask_logits, class_logits), (mask, target) = logits, targets
        return (nn.functional.binary_cross_entropy_with_logits(mask_logits[:, 0], mask.float())
                + nn.functional.cross_entropy(class_logits, target))

    model = _SegCls()
    batch = {**_batch(n=2), "target": torch.tensor([0, 1])}
    before = [p.detach().clone() for p in model.parameters()]
    out = train_one_epoch(model, [batch], loss_fn, _sgd(model), device="cpu", progress=False)
    assert seen == [(torch.float32, torch.float32)] and out["images"] == 2
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), before))  # both heads trained


def test_the_batch_transform_runs_on_each_batch_and_its_output_is_trained_on():
    calls = []

    def blank(x, y):  # an all-zero image whose mask is all foreground
        calls.append((x.shape, y.shape))
        return torch.zeros_like(x), torch.ones_like(y)

    model = _net()
    out = _run(copy.deepcopy(model), [_batch(n=2), _batch(n=3, seed=1)], _sgd(model, lr=0.0), batch_transform=blank)
    assert calls == [((2, 3, 12, 10), (2, 12, 10)), ((3, 3, 12, 10), (3, 12, 10))]
    blank_batch = {"image": torch.zeros(1, 3, 12, 10), "mask": torch.ones(1, 12, 10, dtype=torch.uint8)}
    assert out["loss"] == pytest.approx(_loss_of(model, blank_batch), rel=1e-6)
