"""Classification losses: weighted CE, focal, asymmetric, label smoothing, probability targets; each trains."""

import pytest
import torch
import torch.nn.functional as F

from segkit.ground.errors import SegkitError
from segkit.models.losses import CLS_LOSSES, create_loss

C = 4


def _batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g), torch.randint(0, C, (n,), generator=g)


def test_focal_with_gamma_0_and_asymmetric_without_focusing_are_cross_entropy():
    logits, target = _batch()
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(create_loss([{"name": "focal", "gamma": 0}], classes=C, task="cls")(logits, target), ce)
    asl = create_loss([{"name": "asymmetric", "gamma_pos": 0, "gamma_neg": 0, "label_smoothing": 0}],
                      classes=C, task="cls")
    assert torch.allclose(asl(logits, target), ce)
    assert torch.allclose(create_loss(["ce"], classes=C, task="cls")(logits, target), ce)


def test_focal_down_weights_easy_examples():
    target = torch.tensor([0, 1])
    logits = torch.tensor([[6.0, 0, 0, 0], [0, 0.2, 0, 0]])  # first easy, second hard
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = torch.stack([create_loss([{"name": "focal", "gamma": 2}], classes=C, task="cls")(logits[i:i + 1],
                                                                                             target[i:i + 1])
                         for i in range(2)])
    ratio = focal / ce
    assert ratio[0] < 0.01 < 0.3 < ratio[1] < 1


def test_asymmetric_down_weights_the_smoothed_negatives():
    """Single-label ASL = smoothed CE whose off-target terms are scaled by p^gamma_neg."""
    logits, target = _batch(3)
    smoothed_ce = create_loss([{"name": "ce", "label_smoothing": 0.1}], classes=C, task="cls")
    no_focus = create_loss([{"name": "asymmetric", "gamma_neg": 0}], classes=C, task="cls")
    assert torch.allclose(no_focus(logits, target), smoothed_ce(logits, target))
    asl = create_loss(["asymmetric"], classes=C, task="cls")(logits, target)
    on_target = -(0.9 + 0.1 / C) * F.log_softmax(logits, 1).gather(1, target[:, None]).mean()
    assert on_target < asl < smoothed_ce(logits, target)


def test_class_weights_and_label_smoothing():
    logits, target = _batch(1)
    weight = [1.0, 2.0, 0.5, 3.0]
    expected = F.cross_entropy(logits, F.one_hot(target, C).float(), weight=torch.tensor(weight))
    got = create_loss([{"name": "ce", "class_weights": weight}], classes=C, task="cls")(logits, target)
    assert torch.allclose(got, expected)
    smooth = create_loss([{"name": "focal", "gamma": 0, "label_smoothing": 0.2}], classes=C, task="cls")
    soft = F.one_hot(target, C).float() * 0.8 + 0.2 / C
    assert torch.allclose(smooth(logits, target), -(soft * F.log_softmax(logits, 1)).sum(1).mean())


@pytest.mark.parametrize("name", ["ce", "focal", "asymmetric", "bce"])
def test_probability_targets_equal_one_hot_targets(name):
    logits, target = _batch(2)
    loss = create_loss([name], classes=C, task="cls")
    assert torch.allclose(loss(logits, target), loss(logits, F.one_hot(target, C).float()))


@pytest.mark.parametrize("name", sorted(CLS_LOSSES))
def test_every_cls_loss_trains_a_linear_classifier(name):
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = x[:, :C].argmax(1)  # learnable: the class is the largest of the first C features
    model = torch.nn.Linear(6, C)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss_fn = create_loss([name], classes=C, task="cls")
    first = float(loss_fn(model(x), y).detach())
    for _ in range(25):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    assert float(loss_fn(model(x), y).detach()) < 0.7 * first
    assert (model(x).argmax(1) == y).float().mean() > 0.8


@pytest.mark.parametrize("term, message", [
    ({"name": "ce", "class_weights": [1, 2]}, "4 values"),
    ({"name": "focal", "label_smoothing": 1.5}, "label_smoothing"),
    ({"name": "focal", "gamma": -1}, "gamma"),
    ({"name": "asymmetric", "gamma_neg": -2}, "gamma_neg"),
    ({"name": "asymmetric", "gama_neg": 2}, "loss.asymmetric: bad option"),
])
def test_bad_options_are_one_line_errors(term, message):
    with pytest.raises(SegkitError, match=message):
        create_loss([term], classes=C, task="cls")


def test_seg_cls_loss_is_the_weighted_sum_of_both_heads():
    from segkit.models.losses import create_task_loss

    g = torch.Generator().manual_seed(5)
    masks, labels = torch.randn(2, 1, 9, 7, generator=g), torch.randn(2, 2, generator=g)
    mask, target = (torch.rand(2, 9, 7, generator=g) > 0.5).long(), torch.tensor([0, 1])
    loss = create_task_loss("seg+cls", seg_terms=["dice"], cls_terms=[{"name": "ce", "weight": 0.3}], classes=1)
    expected = create_loss(["dice"], classes=1)(masks, mask) + 0.3 * F.cross_entropy(labels, target)
    assert torch.allclose(loss((masks, labels), (mask, target)), expected)
    assert set(loss.last) == {"seg_dice", "cls_ce"}
    with pytest.raises(SegkitError, match="valid: seg, cls, seg\\+cls"):
        create_task_loss("det", seg_terms=["dice"], cls_terms=["ce"], classes=1)
