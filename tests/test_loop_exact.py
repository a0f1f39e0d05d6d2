"""train_one_epoch's exact bookkeeping: a short last group is a mean over its own batches, a NaN
anywhere in a group stops training, the loss is the per-image mean, tuple and seg+cls batches,
and early stopping's boundaries."""

import copy

import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.models.losses import create_loss
from segkit.train.loop import EarlyStopping, _split, train_one_epoch
from test_loop import _batch, _net


def _run(model, loader, opt, **kw):
    return train_one_epoch(model, loader, create_loss(["bce"], classes=1), opt, device="cpu", progress=False, **kw)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.5)


@pytest.mark.parametrize("lengthless", [False, True])
def test_a_short_last_group_steps_on_the_mean_of_its_own_batches(lengthless):
    """3 batches, accumulate=2: the last step uses batch 3's gradient at full weight, as if it were
    a group of one (with or without len() on the loader)."""
    batches = [_batch(seed=i) for i in range(3)]
    grouped = _net()
    _run(grouped, iter(batches) if lengthless else batches, _sgd(grouped), accumulate=2, channels_last=False)
    by_hand = _net()
    _run(by_hand, batches[:2], _sgd(by_hand), accumulate=2, channels_last=False)
    _run(by_hand, batches[2:], _sgd(by_hand), accumulate=1, channels_last=False)
    for a, b in zip(grouped.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b)


def test_a_nan_in_the_first_batch_of_a_group_stops_training():
    bad = _batch()
    bad["image"][0, 0, 0, 0] = float("nan")
    model = _net()
    with pytest.raises(SegkitError, match="loss became NaN at step 1 "):
        _run(model, [bad, _batch(seed=1)], _sgd(model), accumulate=2)


def test_the_loss_is_the_per_image_mean_and_seconds_are_elapsed_time():
    model = _net()
    one = _batch(n=1)
    with torch.no_grad():
        expected = float(create_loss(["bce"], classes=1)(model(one["image"]), one["mask"]))
    out = _run(copy.deepcopy(model), [one], _sgd(model), channels_last=False)
    assert out["loss"] == pytest.approx(expected, rel=1e-5) and out["images"] == 1
    assert 0 <= out["seconds"] < 600


def test_tuple_and_seg_cls_batches_split_into_image_and_targets():
    image, mask, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 4, 4), torch.tensor([1, 0])
    x, y = _split((image, target))
    assert x is image and y is target
    x, y = _split({"image": image, "mask": mask, "target": target})
    assert x is image and y[0] is mask and y[1] is target
    assert _split({"image": image, "target": target})[1] is target


def test_early_stopping_boundaries():
    up = EarlyStopping(patience=1, mode="max", min_delta=0.1)
    assert up.step(0.5) is False and up.improved and up.bad_epochs == 0
    assert up.step(0.6) is True and not up.improved               # not more than min_delta better
    down = EarlyStopping(patience=1, mode="min", min_delta=0.1)
    down.step(0.5)
    assert down.step(0.4) is True and not down.improved and down.best == 0.5
    assert down.step(0.39) is False and down.improved and down.best == 0.39
    first_nan = EarlyStopping(patience=2)
    assert first_nan.step(float("nan")) is False and not first_nan.improved and first_nan.bad_epochs == 1
    assert first_nan.best is None
