"""EMA with warm-up (segkit.train.ema): the decay sequence, BatchNorm statistics, a toy problem."""

import pytest
import torch
from torch import nn

from segkit.train.ema import ModelEma, ema_decay


def test_decay_sequence_ramps_up_to_the_configured_decay():
    seq = [ema_decay(0.99, k) for k in range(6)]
    assert seq == [0.0, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15]  # the first update copies
    assert ema_decay(0.99, 890) == pytest.approx(891 / 900)  # (1 + k) / (10 + k) = 0.99 at k = 890
    assert ema_decay(0.99, 891) == 0.99 and ema_decay(0.99, 10 ** 6) == 0.99
    assert ema_decay(0.99, 5, warmup=False) == 0.99 and ema_decay(0.99, 0, warmup=False) == 0.0


def test_updates_apply_that_sequence_to_the_parameters():
    model = nn.Linear(2, 1, bias=False)
    ema = ModelEma(model, decay=0.9)
    expected = None
    for step in range(30):
        with torch.no_grad():
            model.weight.fill_(float(step))
        d = ema.current_decay()
        assert d == ema_decay(0.9, step)
        ema.update(model)
        expected = float(step) if expected is None else d * expected + (1 - d) * float(step)
        assert ema.module.weight[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert int(ema.averaged.n_averaged) == 30


def test_batchnorm_statistics_are_the_live_models():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = ModelEma(model, decay=0.999)
    model.train()
    for i in range(3):
        model(torch.randn(4, 1, 8, 8) * (i + 1) + 5)
        ema.update(model)
    live, averaged = model[1], ema.module[1]
    assert torch.equal(averaged.running_mean, live.running_mean)
    assert torch.equal(averaged.running_var, live.running_var)
    assert int(averaged.num_batches_tracked) == 3


def test_ema_after_n_steps_is_closer_to_the_trained_weights_than_to_the_initial_ones():
    """Least squares with SGD for 200 steps: with decay 0.99 and no warm-up the average would still
    hold 0.99 ** 200 = 13 % of the initial weights; with the warm-up it tracks the trained ones."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    target = x @ torch.randn(8, 1)
    model = nn.Linear(8, 1)
    initial = torch.cat([p.detach().clone().reshape(-1) for p in model.parameters()])
    ema = ModelEma(model, decay=0.99)
    plain = ModelEma(model, decay=0.99, warmup=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
        ema.update(model)
        plain.update(model)

    def flat(m):
        return torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    trained = flat(model)
    to_trained, to_initial = (flat(ema.module) - trained).norm(), (flat(ema.module) - initial).norm()
    assert to_trained < 0.1 * to_initial
    # and closer than the same average without the warm-up
    assert to_trained < (flat(plain.module) - trained).norm()
    loss = nn.functional.mse_loss(ema.module(x), target).item()
    assert loss < 0.1 * nn.functional.mse_loss(torch.zeros_like(target), target).item()


def test_state_dict_round_trip_continues_the_same_sequence():
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    a = ModelEma(model, decay=0.95)
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        a.update(model)
    b = ModelEma(nn.Linear(3, 2), decay=0.95)
    b.load_state_dict(a.state_dict())
    assert b.current_decay() == a.current_decay() == ema_decay(0.95, 4)
    with torch.no_grad():
        model.weight.add_(1.0)
    a.update(model)
    b.update(model)
    assert all(torch.equal(p, q) for p, q in zip(a.module.state_dict().values(), b.module.state_dict().values()))
