"""Classifiers: smp encoders and any timm model ("tu-"), in_channels from the channel spec, seg+cls heads."""

import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.models.classifier import TimmClassifier
from segkit.models.factory import check_input_size, create_model, freeze_encoder


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet10t", "tu-mobilenetv3_small_050"])
def test_classifiers_map_images_to_class_logits_and_freeze(encoder):
    model = create_model(encoder=encoder, in_channels=5, classes=7, task="cls").eval()
    assert model(torch.rand(2, 5, 32, 32)).shape == (2, 7)
    frozen = freeze_encoder(model, 0.5)
    assert frozen > 0 and any(p.requires_grad for p in model.classification_head.parameters())
    assert not all(p.requires_grad for p in model.encoder.parameters())


def test_any_timm_model_including_a_vit_and_its_size_is_checked_up_front():
    model = create_model(encoder="tu-vit_tiny_patch16_224", in_channels=3, classes=4, task="cls")
    assert isinstance(model, TimmClassifier)
    check_input_size(model, 224, in_channels=3)
    with pytest.raises(SegkitError, match="data.size: 64 px does not go through"):
        check_input_size(model, 64, in_channels=3)


def test_unknown_timm_model_names_the_nearest():
    with pytest.raises(SegkitError, match=r"unknown timm model tu-resnet1Ot \(did you mean .*tu-resnet10t"):
        create_model(encoder="tu-resnet1Ot", task="cls", classes=3)


def test_seg_cls_is_one_smp_model_with_both_heads():
    model = create_model("Unet", "resnet18", in_channels=2, classes=1, task="seg+cls").eval()
    masks, labels = model(torch.rand(3, 2, 64, 64))
    assert masks.shape == (3, 1, 64, 64) and labels.shape == (3, 2)
    plain = create_model("Unet", "resnet18", in_channels=2, classes=1)
    assert set(model.state_dict()) - set(plain.state_dict()) == {k for k in model.state_dict()
                                                                  if k.startswith("classification_head")}
    with pytest.raises(SegkitError, match="aux_params is not an option"):
        create_model("Unet", "resnet18", task="seg", aux_params={"classes": 3})
