"""MixUp/CutMix through timm: targets are class probabilities summing to 1, seeded per batch, bad options named."""

import numpy as np
import pytest
import torch

from segkit.data.mixing import create_mixup
from segkit.ground.errors import SegkitError
from segkit.models.losses import create_loss


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("spec", [{"mixup_alpha": 0.4}, {"mixup_alpha": 0.0, "cutmix_alpha": 1.0},
                                  {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5}])
def test_targets_sum_to_one_and_mix_two_classes(spec):
    mix = create_mixup(spec, classes=4, batch_size=6)
    images, targets = _batch()
    mixed, soft = mix(images.clone(), targets)
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(1), torch.ones(6))
    assert not torch.equal(mixed, images)
    # timm mixes each row with its mirror in the batch: all weight sits on those two classes
    partner = targets.flip(0)
    on_pair = soft.gather(1, targets[:, None]) + soft.gather(1, partner[:, None]) * (targets != partner)[:, None]
    assert torch.allclose(on_pair.squeeze(1), torch.ones(6))
    loss = create_loss(["ce"], classes=4, task="cls")(torch.randn(6, 4), soft)
    assert torch.isfinite(loss)


def test_each_batch_is_seeded_and_the_global_numpy_state_is_left_alone():
    images, targets = _batch()
    a, b = create_mixup({"mixup_alpha": 0.4}, classes=4, batch_size=6), create_mixup({"mixup_alpha": 0.4}, classes=4,
                                                                                        batch_size=6)
    for mix in (a, b):
        mix.set_epoch(3)
    np.random.seed(1)
    before = np.random.get_state()[1].copy()
    first = a(images.clone(), targets)[1]
    assert np.array_equal(np.random.get_state()[1], before)
    assert torch.equal(first, b(images.clone(), targets)[1])  # same (seed, epoch, batch): same mix
    assert not torch.equal(first, a(images.clone(), targets)[1])  # the next batch draws anew


@pytest.mark.parametrize("spec, kwargs, message", [
    ({"mixup_alpa": 0.2}, {}, "unknown option"),
    ({"mixup_alpha": 0.2}, {"batch_size": 5}, "even train.batch_size"),
    ({"mixup_alpha": 0.2}, {"classes": 1}, ">= 2 classes"),
    ("mixup", {}, "expected a mapping"),
])
def test_bad_options(spec, kwargs, message):
    with pytest.raises(SegkitError, match=message):
        create_mixup(spec, **{"classes": 4, "batch_size": 6, **kwargs})
    assert create_mixup(None, classes=4, batch_size=5) is None
