"""create_loss: every name builds and is finite (binary, multiclass, cls), weights, targets, errors."""

import pytest
import torch
import torch.nn.functional as F

from segkit.ground.errors import SegkitError
from segkit.models.losses import CLS_LOSSES, SEG_LOSSES, create_loss, loss_names

BINARY_ONLY = {"mcc"}
MULTI_ONLY = {"ce", "soft_ce"}


def _batch(classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 13, 11, generator=g, requires_grad=True)
    target = torch.randint(0, max(classes, 2), (2, 13, 11), generator=g).to(torch.uint8)
    target[0, :3] = 1  # both values present in every image
    target[0, 3:6] = 0
    return logits, target


def _supported(names, classes_options, binary_only=BINARY_ONLY, multi_only=MULTI_ONLY):
    """(name, classes) pairs a loss accepts: the unsupported ones have their own error test."""
    return [(n, c) for n in sorted(names) for c in classes_options
            if not ((c == 1 and n in multi_only) or (c > 1 and n in binary_only))]


@pytest.mark.parametrize("name, classes", [(n, 1) for n in sorted(MULTI_ONLY)] + [(n, 3) for n in sorted(BINARY_ONLY)])
def test_a_loss_refuses_the_class_count_it_cannot_handle(name, classes):
    with pytest.raises(SegkitError, match=f"loss.{name}"):
        create_loss([name], classes=classes)


@pytest.mark.parametrize("name, classes", _supported(SEG_LOSSES, [1, 3]))
def test_every_seg_loss_is_finite_with_gradient(name, classes):
    logits, target = _batch(classes)
    loss = create_loss([{"name": name, "weight": 0.5}], classes=classes)
    value = loss(logits, target)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SEG_LOSSES.keys() - MULTI_ONLY))
def test_binary_accepts_long_nhw_and_float_n1hw_targets(name):
    logits, target = _batch(1)
    loss = create_loss([name], classes=1)
    a = loss(logits, target.long())
    b = loss(logits, target.unsqueeze(1).float())
    assert torch.allclose(a, b)


@pytest.mark.parametrize("name", ["soft_bce", "dice", "focal"])
def test_a_binary_model_counts_every_non_zero_label_as_foreground(name):
    """An id raster (or a 0/1/2 mask) read for a binary model: 7 is foreground, as evaluation counts it;
    before, BCE took 7 as the target and the loss went to -3000 while the Dice fell."""
    logits, target = _batch(1)
    ids = target.long() * torch.randint(1, 9, target.shape)
    assert int(ids.max()) > 1
    loss = create_loss([name], classes=1)
    assert torch.allclose(loss(logits, ids), loss(logits, target.long()))
    ignored = create_loss([name], classes=1, ignore_index=255)
    with_ignore = torch.where(torch.rand(target.shape) < 0.2, torch.full_like(ids, 255), ids)
    binary = torch.where(with_ignore == 255, with_ignore, (with_ignore > 0).long())
    assert torch.allclose(ignored(logits, with_ignore), ignored(logits, binary))


CLS_MULTI_ONLY = MULTI_ONLY | {"focal", "asymmetric"}


@pytest.mark.parametrize("name", sorted(CLS_MULTI_ONLY & CLS_LOSSES.keys()))
def test_a_cls_loss_refuses_one_class_when_it_needs_several(name):
    with pytest.raises(SegkitError, match=name):
        create_loss([name], classes=1, task="cls")


@pytest.mark.parametrize("name, classes", _supported(CLS_LOSSES, [1, 4], binary_only=set(), multi_only=CLS_MULTI_ONLY))
def test_every_cls_loss_on_n_by_c_logits(name, classes):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, classes, generator=g)
    target = torch.tensor([0, 1, 1, 0, 1, 0]) if classes == 1 else torch.tensor([0, 1, 2, 3, 2, 1])
    value = create_loss([name], classes=classes, task="cls")(logits, target)
    assert torch.isfinite(value) and value > 0


def test_weighted_sum_is_exact():
    logits, target = _batch(1)
    dice = create_loss(["dice"], classes=1)(logits, target)
    bce = create_loss(["bce"], classes=1)(logits, target)
    both = create_loss([{"name": "dice", "weight": 2.0}, {"name": "bce", "weight": 0.25}], classes=1)
    assert torch.allclose(both(logits, target), 2.0 * dice + 0.25 * bce)
    assert set(both.last) == {"dice", "bce"}
    assert torch.allclose(create_loss("dice+bce", classes=1)(logits, target), dice + bce)
    assert torch.allclose(create_loss({"dice": 1.0, "bce": 1.0}, classes=1)(logits, target), dice + bce)


def test_bce_matches_torch_and_pos_weight():
    logits, target = _batch(1)
    ref = F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).float(), pos_weight=torch.tensor([3.0]))
    got = create_loss([{"name": "soft_bce", "pos_weight": 3.0}], classes=1)(logits, target)
    assert torch.allclose(got, ref)


def test_multiclass_bce_is_one_hot_with_per_class_pos_weight():
    logits, target = _batch(3)
    hot = F.one_hot(target.long(), 3).permute(0, 3, 1, 2).float()
    pw = torch.tensor([1.0, 2.0, 5.0])
    ref = F.binary_cross_entropy_with_logits(logits, hot, pos_weight=pw.view(3, 1, 1))
    got = create_loss([{"name": "bce", "pos_weight": [1, 2, 5]}], classes=3)(logits, target)
    assert torch.allclose(got, ref)


def test_label_smoothing_options():
    logits, target = _batch(3)
    plain = create_loss(["soft_ce"], classes=3)(logits, target)
    smooth = create_loss([{"name": "soft_ce", "smooth_factor": 0.1}], classes=3)(logits, target)
    assert torch.allclose(plain, F.cross_entropy(logits, target.long()))
    assert not torch.allclose(plain, smooth)
    ce = create_loss([{"name": "ce", "label_smoothing": 0.1}], classes=3)(logits, target)
    assert torch.allclose(ce, F.cross_entropy(logits, target.long(), label_smoothing=0.1))


def test_loss_moves_with_to_device_buffers():
    """pos_weight is a buffer, so `.to()` (what fit does with the model's device) moves it along."""
    loss = create_loss([{"name": "bce", "pos_weight": 2.0}], classes=1)
    assert [(b.device.type, b.dtype) for b in loss.buffers()] == [("cpu", torch.float32)]
    assert loss.to(torch.float64) is loss  # dtype: a float64 batch gives the float64 reference value
    logits, target = _batch(1)
    logits = logits.detach().double()
    ref = F.binary_cross_entropy_with_logits(logits, target.unsqueeze(1).double(),
                                             pos_weight=torch.tensor([2.0], dtype=torch.float64))
    assert torch.equal(loss(logits, target), ref)
    loss.to("meta")  # and device (the only other device a CPU machine has)
    assert [b.device.type for b in loss.buffers()] == ["meta"]


def test_mcc_refuses_ignore_index():
    with pytest.raises(SegkitError, match="loss.mcc: does not support ignore_index"):
        create_loss(["mcc"], classes=1, ignore_index=255)
    create_loss(["mcc"], classes=1)  # without it, fine


def test_errors_name_the_problem():
    with pytest.raises(SegkitError, match="valid: .*dice.*lovasz"):
        create_loss(["dyce"], classes=1)
    with pytest.raises(SegkitError, match="loss.dice"):
        create_loss([{"name": "dice", "smoothh": 1}], classes=1)
    with pytest.raises(SegkitError, match="valid: asymmetric, bce, ce, focal"):
        create_loss(["dice"], classes=3, task="cls")
    with pytest.raises(SegkitError, match="no loss"):
        create_loss([], classes=1)
    assert loss_names("cls") == sorted(CLS_LOSSES)


@pytest.mark.parametrize("name, classes", _supported(SEG_LOSSES.keys() - {"mcc"}, [1, 3]))
def test_ignored_pixels_do_not_move_the_loss(name, classes):
    logits, target = _batch(classes)
    target[:, 5:8, 2:6] = 255
    loss = create_loss([name], classes=classes, ignore_index=255)
    base = loss(logits, target)
    changed = logits.detach().clone()
    changed[:, 0, 5:8, 2:6] += 7.0  # only the ignored pixels (one channel: softmax shifts)
    assert torch.allclose(loss(changed, target), base, atol=1e-6)
    other = logits.detach().clone()
    other[:, 0, 0:2, 0:3] += 7.0  # labelled pixels do count
    assert not torch.allclose(loss(other, target), base)
