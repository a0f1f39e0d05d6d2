"""train_one_epoch / evaluate on a tiny conv model: learning, AMP, accumulation, clipping, NaN, schedules."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.models.losses import create_loss
from segkit.runs.checkpoint import load_checkpoint, save_checkpoint
from segkit.runs.device import pick_device, seed_everything
from segkit.train.ema import ModelEma
from loop_eval import evaluate
from segkit.train.loop import EarlyStopping, train_one_epoch
from segkit.train.optim import create_optimizer, create_scheduler
from segkit.train.stage import Parts, restore_training_state, training_state


def _net(out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, out, 1))


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, 12, 10, generator=g)
    mask = (image[:, 0] > 0.5).to(torch.uint8)  # learnable from the first channel
    return {"image": image, "mask": mask}


def _run(model, loader, opt, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("amp", False)
    kw.setdefault("progress", False)
    return train_one_epoch(model, loader, create_loss(["bce"], classes=1), opt, **kw)


def test_loss_decreases_on_a_fixed_batch():
    model = _net()
    opt = create_optimizer("adamw", model.parameters(), lr=5e-2)
    batch = _batch()
    first = _run(model, [batch] * 5, opt)
    middle = _run(model, [batch] * 5, opt)
    later = _run(model, [batch] * 5, opt)
    assert first["loss"] > middle["loss"] > later["loss"]
    assert later["loss"] < first["loss"] * 0.85
    assert first["steps"] == 5 and first["batches"] == 5 and first["images"] == 20
    assert first["seconds"] > 0 and first["lr"] == pytest.approx(5e-2)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_amp_is_bf16_where_it_helps_and_float32_elsewhere(monkeypatch, native_bf16):
    """bf16 autocast on a CPU with native bf16; elsewhere (AVX2 only: ~12x slower emulated) float32."""
    import segkit.runs.device as device

    monkeypatch.setattr(device, "cpu_bf16_is_fast", lambda: native_bf16)
    model = _net()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = create_optimizer("sgd", model.parameters(), lr=0.5, momentum=0.9)
    batch = _batch()
    a = _run(model, [batch] * 4, opt, amp=True)
    b = _run(model, [batch] * 4, opt, amp=True)
    assert set(seen) == ({torch.bfloat16} if native_bf16 else {torch.float32})
    assert math.isfinite(a["loss"]) and b["loss"] < a["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("channels_last", [False, True])
def test_accumulating_two_half_batches_equals_one_full_batch(channels_last):
    batch = _batch(n=6, seed=3)
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    full_model, acc_model = _net(), _net()
    opt_full = torch.optim.SGD(full_model.parameters(), lr=1.0)  # w1 = w0 - grad: equal weights <=> equal grads
    opt_acc = torch.optim.SGD(acc_model.parameters(), lr=1.0)
    _run(full_model, [batch], opt_full, channels_last=channels_last)
    out = _run(acc_model, halves, opt_acc, accumulate=2, channels_last=channels_last)
    assert out["steps"] == 1 and out["batches"] == 2
    for a, b in zip(full_model.parameters(), acc_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_short_last_group_still_steps_and_max_steps_caps():
    model = _net()
    opt = create_optimizer("adam", model.parameters(), lr=1e-3)
    out = _run(model, [_batch(seed=i) for i in range(5)], opt, accumulate=2)
    assert out["steps"] == 3 and out["batches"] == 5
    out = _run(model, [_batch(seed=i) for i in range(5)], opt, max_steps=2)
    assert out["steps"] == 2 and out["batches"] == 2
    out = _run(model, iter([_batch(seed=i) for i in range(3)]), opt, accumulate=2)  # no len()
    assert out["steps"] == 2


def test_scheduler_and_ema_follow_optimizer_steps():
    model = _net()
    opt = create_optimizer("adamw", model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = create_scheduler("cosine", opt, total_steps=4, warmup_steps=0)
    ema = ModelEma(model, decay=0.5)
    out = _run(model, [_batch(seed=i) for i in range(4)], opt, scheduler=sched, accumulate=2, ema=ema)
    assert out["steps"] == 2 and sched.last_epoch == 2
    assert "terms" not in out  # one loss term
    assert out["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert int(ema.averaged.n_averaged) == 2
    assert not torch.equal(ema.module[0].weight, model[0].weight)  # lags the live weights


def test_clipping_bounds_the_update():
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = _batch()
    batch["image"] = batch["image"] * 100  # large gradients
    _run(model, [batch], opt, clip=1e-3)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert 0 < delta.norm() <= 1e-3 * (1 + 1e-4)


def test_nan_loss_stops_naming_its_step():
    """The flag is read one optimizer step late (no host wait per step): the error still names the
    step of the NaN batch, and it is raised before the epoch returns (so no checkpoint follows it)."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = _batch()
    bad["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(SegkitError, match="loss became NaN at step 4.*last good checkpoint kept"):
        _run(model, [_batch(), bad, _batch()], opt, step_offset=2)
    with pytest.raises(SegkitError, match="loss became NaN at step 3 "):  # the last step: checked at the end
        other = _net()
        _run(other, [_batch(), bad], torch.optim.SGD(other.parameters(), lr=0.1), step_offset=1)


def test_classification_batches_and_evaluate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(0)
    loader = [{"image": torch.rand(6, 3, 9, 9, generator=g), "target": torch.tensor([0, 1, 2, 0, 1, 2])}]
    loss = create_loss(["ce"], classes=3, task="cls")
    opt = create_optimizer("adamw", model.parameters(), lr=1e-2)
    out = train_one_epoch(model, loader, loss, opt, device="cpu", amp=False, progress=False)
    assert out["steps"] == 1 and math.isfinite(out["loss"])
    metrics = evaluate(model, loader, loss, device="cpu", task="cls", classes=3)
    assert set(metrics) == {"loss", "accuracy", "f1"} and 0 <= metrics["accuracy"] <= 1


def test_evaluate_segmentation_dice_of_a_perfect_model():
    class Oracle(nn.Module):  # logits +-10 from the same rule that made the masks
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return (x[:, :1] > 0.5).float() * 20 - 10 + self.dummy

    batch = _batch()
    out = evaluate(Oracle(), [batch, batch], create_loss(["dice"], classes=1), device="cpu", classes=1)
    assert out["dice"] == pytest.approx(1.0) and out["iou"] == pytest.approx(1.0)
    assert out["loss"] < 1e-3 and out["dice_per_class"] == [pytest.approx(1.0)]


def test_schedules_and_optimizer_names():
    p = [nn.Parameter(torch.zeros(2))]
    opt = create_optimizer("sgd", p, lr=1.0)
    sched = create_scheduler("cosine", opt, total_steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    opt = create_optimizer("adamw", p, lr=1.0)
    sched = create_scheduler("constant", opt, total_steps=5, warmup_steps=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt = create_optimizer("adamw", p, lr=1.0)
    sched = create_scheduler("onecycle", opt, total_steps=10, warmup_steps=3)
    seen = []
    for _ in range(10):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert max(seen) == pytest.approx(1.0, rel=0.05) and seen[-1] < 0.05
    with pytest.raises(SegkitError, match="valid: adamw, sgd, adam"):
        create_optimizer("lamb", p, lr=1.0)
    with pytest.raises(SegkitError, match="valid: cosine, onecycle, constant"):
        create_scheduler("step", opt, total_steps=3)
    frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(SegkitError, match="no trainable"):
        create_optimizer("adamw", [frozen], lr=1.0)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SegkitError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(SegkitError, match="unknown device"):
        pick_device("tpu9")


def _epoch_data(n=3):
    # drawn from the global numpy RNG, so resume must restore it to get the same data
    out = []
    for _ in range(n):
        image = torch.from_numpy(np.random.rand(2, 3, 8, 7).astype(np.float32))
        out.append({"image": image, "mask": (image[:, 0] > 0.5).to(torch.uint8)})
    return out


def _parts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 1, 1))
    opt = create_optimizer("adamw", model.parameters(), lr=1e-2, weight_decay=1e-3)
    sched = create_scheduler("cosine", opt, total_steps=9, warmup_steps=2)
    return model, opt, sched, ModelEma(model, decay=0.9)


def _stage(model, opt, sched, ema) -> Parts:
    return Parts(model=model, ddp_model=model, ema=ema, dataset=None, loader=None, optimizer=opt, scheduler=sched,
                 scaler=None, loss_fn=None, early=EarlyStopping(None), steps_per_epoch=1)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    loss = create_loss(["dice", "bce"], classes=1)
    kw = dict(device="cpu", amp=False, progress=False)
    seed_everything(7)
    model, opt, sched, ema = _parts()
    for _ in range(3):
        train_one_epoch(model, _epoch_data(), loss, opt, scheduler=sched, ema=ema, **kw)
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    straight_ema = {k: v.clone() for k, v in ema.module.state_dict().items()}

    seed_everything(7)
    model, opt, sched, ema = _parts()
    train_one_epoch(model, _epoch_data(), loss, opt, scheduler=sched, ema=ema, **kw)
    best = {"epoch": 1, "value": 0.5}
    path = save_checkpoint(tmp_path / "epoch_0001.pt", training_state(_stage(model, opt, sched, ema), 1, best, {}))
    seed_everything(999)  # "a new process": different RNG state, fresh objects
    model, opt, sched, ema = _parts()
    state = load_checkpoint(path)
    assert restore_training_state(state, _stage(model, opt, sched, ema)) == 1 and state["best"] == best
    for _ in range(2):
        train_one_epoch(model, _epoch_data(), loss, opt, scheduler=sched, ema=ema, **kw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, straight_ema[k]), k


def test_early_stopping_patience_and_state():
    stop = EarlyStopping(patience=2, mode="max", min_delta=0.01)
    assert [stop.step(v) for v in (0.5, 0.6, 0.605, 0.59)] == [False, False, False, True]
    assert stop.best == 0.6 and not stop.improved
    again = EarlyStopping(patience=2)
    again.load_state_dict(stop.state_dict())
    assert again.best == 0.6 and again.bad_epochs == 2
    low = EarlyStopping(patience=None, mode="min")
    assert not any(low.step(v) for v in (3, 2, 5, 6, 7)) and low.best == 2
    with pytest.raises(SegkitError, match="mode"):
        EarlyStopping(3, mode="up")


def test_grad_scaler_path_with_clipping_matches_unscaled():
    # the CUDA fp16 path's scaler logic (scale, unscale_ before clipping, step, update) on a CPU scaler
    batch = _batch()
    plain, scaled = _net(), _net()
    _run(plain, [batch] * 2, torch.optim.SGD(plain.parameters(), lr=0.1), clip=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _run(scaled, [batch] * 2, torch.optim.SGD(scaled.parameters(), lr=0.1), clip=0.05, scaler=scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert scaler.get_scale() == 2.0**10  # no overflow: scale unchanged, state ready for checkpoints


def test_per_term_losses_are_reported_and_sum_to_the_loss():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen weights: every batch sees the same model
    loss = create_loss([{"name": "dice", "weight": 2.0}, {"name": "bce", "weight": 0.5}], classes=1)
    out = train_one_epoch(model, [_batch(seed=1), _batch(n=2, seed=2)], loss, opt, device="cpu", amp=False,
                          progress=False)
    assert set(out["terms"]) == {"loss_dice", "loss_bce"}
    total = 2.0 * out["terms"]["loss_dice"] + 0.5 * out["terms"]["loss_bce"]
    assert total == pytest.approx(out["loss"], rel=1e-5)
