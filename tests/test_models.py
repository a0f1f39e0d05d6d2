"""create_model over every smp architecture, the classifier head, freezing, and name errors."""

import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.models.factory import (
    ARCHITECTURES,
    architecture_names,
    check_input_size,
    create_model,
    freeze_encoder,
    input_divisor,
)

TINY = "tu-test_resnet"  # timm's test-size ResNet: the every-architecture test stays a few seconds
# slim decoders for speed; each architecture is still built by name through create_model
SPECIAL = {
    "Unet": dict(decoder_channels=(32, 16, 16, 8, 8)),
    "UnetPlusPlus": dict(decoder_channels=(32, 16, 16, 8, 8)),
    "MAnet": dict(decoder_channels=(32, 16, 16, 8, 8), decoder_pab_channels=8),
    "FPN": dict(decoder_pyramid_channels=32, decoder_segmentation_channels=32),  # GroupNorm(32)
    "DeepLabV3": dict(decoder_channels=32),
    "DeepLabV3Plus": dict(decoder_channels=32),
    "PSPNet": dict(psp_out_channels=32),
    "PAN": dict(decoder_channels=16),
    "UPerNet": dict(decoder_channels=32),
    "Segformer": dict(decoder_segmentation_channels=32),
    # DPT only accepts timm ViT encoders (a CNN encoder is a clear error, tested below)
    "DPT": dict(encoder="tu-test_vit", decoder_intermediate_channels=(16, 32, 32, 32),
                decoder_fusion_channels=16),
}
SIZE = {"PAN": 128}  # PAN pools its stride-32 map again: needs >= 128 px input


def test_registry_is_built_from_smp():
    names = architecture_names()
    for expected in ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet",
                     "MAnet", "PAN", "UPerNet", "Segformer", "DPT"):
        assert expected in names
    assert len(names) == len(ARCHITECTURES)


@pytest.mark.parametrize("i,arch", list(enumerate(architecture_names())))
def test_every_architecture_builds_and_predicts(i, arch):
    in_ch, classes = (1, 3) if i % 2 else (3, 1)
    kw = dict(SPECIAL.get(arch, {}))
    encoder = kw.pop("encoder", TINY)
    size = SIZE.get(arch, 64)
    torch.manual_seed(0)
    model = create_model(arch, encoder, None, in_ch, classes, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(1, in_ch, size, size))
    assert out.shape == (1, classes, size, size)
    assert torch.isfinite(out).all()


def test_default_unet_resnet18_smp_encoder():
    torch.manual_seed(0)
    model = create_model().eval()  # Unet / resnet18 / no weights / 3 -> 1
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_names_are_case_insensitive():
    a = create_model("deeplabv3plus", TINY, None, 3, 1, decoder_channels=32)
    assert type(a).__name__ == "DeepLabV3Plus"


def test_dpt_with_cnn_encoder_is_a_clear_error():
    with pytest.raises(SegkitError, match="DPT"):
        create_model("DPT", "resnet18")


def test_unknown_names_list_valid_ones():
    with pytest.raises(SegkitError, match="valid: .*Unet.*"):
        create_model("UNetX")
    with pytest.raises(SegkitError, match="encoder.*resnet18"):
        create_model("Unet", "resnet_nope")
    with pytest.raises(SegkitError, match="task"):
        create_model("Unet", task="detect")
    with pytest.raises(SegkitError, match="decoder_chanels"):
        create_model("Unet", "resnet18", decoder_chanels=(8, 8, 8, 8, 8))


def test_encoder_weights_none_strings():
    torch.manual_seed(0)
    a = create_model("Linknet", TINY, "none", 3, 1)
    assert sum(p.numel() for p in a.parameters()) > 0


@pytest.mark.parametrize("classes,in_ch,encoder", [(1, 3, "resnet18"), (5, 1, TINY)])
def test_classifier_head_shape(classes, in_ch, encoder):
    model = create_model(encoder=encoder, in_channels=in_ch, classes=classes, task="cls", dropout=0.0).eval()
    with torch.no_grad():
        out = model(torch.randn(3, in_ch, 48, 40))
    assert out.shape == (3, classes)


def test_classifier_rejects_unknown_options():
    with pytest.raises(SegkitError, match="decoder_channels"):
        create_model(task="cls", decoder_channels=(8,))


def test_freeze_encoder_fraction_in_order():
    model = create_model("Unet", TINY, None, 3, 1, decoder_channels=(16, 16, 8, 8, 8))
    enc = list(model.encoder.parameters())
    n = freeze_encoder(model, 0.9)
    assert n == int(len(enc) * 0.9)
    assert [p.requires_grad for p in enc] == [False] * n + [True] * (len(enc) - n)
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert freeze_encoder(model, 0.0) == 0
    assert all(p.requires_grad for p in enc)
    assert freeze_encoder(model, 1.0) == len(enc)
    with pytest.raises(SegkitError, match="fraction"):
        freeze_encoder(model, 1.5)


def test_frozen_encoder_does_not_change_when_training():
    torch.manual_seed(0)
    model = create_model("FPN", TINY, None, 3, 1, decoder_pyramid_channels=32,
                         decoder_segmentation_channels=32)
    freeze_encoder(model, 1.0)
    before = [p.clone() for p in model.encoder.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))


def test_imagenet_weights_load_or_fail_with_a_clear_error():
    # tests run with HF_HUB_OFFLINE=1: without a local cache this is the one-line SegkitError
    try:
        model = create_model("Unet", "resnet18", "imagenet", 3, 1)
    except SegkitError as e:
        assert "encoder_weights" in str(e)
    else:
        assert isinstance(model, torch.nn.Module)


def test_freeze_bn_stats_keeps_frozen_statistics():
    torch.manual_seed(0)
    model = create_model("Unet", TINY, None, 3, 1, decoder_channels=(16, 16, 8, 8, 8)).train()
    freeze_encoder(model, 1.0, freeze_bn_stats=True)
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    before = [m.running_mean.clone() for m in norms]
    model(torch.rand(2, 3, 32, 32) * 5 + 3)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    freeze_encoder(model, 0.0, freeze_bn_stats=True)  # unfrozen: statistics follow the data again
    model(torch.rand(2, 3, 32, 32) * 5 + 3)
    assert not torch.equal(before[0], norms[0].running_mean)
    assert all(m.momentum == 0.1 for m in norms)


def test_input_size_checks_before_training():
    fpn = create_model("FPN", TINY, None, 3, 1, decoder_pyramid_channels=32, decoder_segmentation_channels=32)
    assert input_divisor(fpn) == 32
    check_input_size(fpn, 256)
    with pytest.raises(SegkitError, match="data.size: 250x250 must be a multiple of 32 for FPN"):
        check_input_size(fpn, 250)
    with pytest.raises(RuntimeError):  # what the check saves the user from
        fpn.eval()(torch.zeros(1, 3, 250, 250))
    with pytest.raises(SegkitError, match="minimum 128"):
        check_input_size(fpn, (64, 96), min_size=128)
    unet = create_model("Unet", TINY, None, 3, 1, decoder_channels=(16, 16, 8, 8, 8))
    assert input_divisor(unet) == 1  # smp 0.6 Unet takes any size
    check_input_size(unet, 250)
    with pytest.raises(SegkitError, match="aux_params"):
        create_model("Unet", TINY, aux_params={"classes": 2})
