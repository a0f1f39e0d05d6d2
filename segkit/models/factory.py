"""create_model(): every segmentation_models_pytorch architecture by name, a classifier, or both in one.

task "seg": an smp model (logits N,classes,H,W); "cls": a classifier (logits N,classes; see
segkit.models.classifier: smp encoders or any timm model as "tu-NAME"); "seg+cls": the smp
model with its classification head on the deepest encoder features (smp ``aux_params``),
returning (mask logits, tile-class logits).

The registry is read from smp itself (``MODEL_ARCHITECTURES_MAPPING``), so a newer smp adds
architectures without code here; names match case-insensitively and ignore ``_``/``-``
("DeepLabV3Plus", "deeplabv3plus", "unet_plus_plus" is not a name: "UnetPlusPlus" is).

Notes on particular architectures (smp 0.6.0):
- PAN pools its deepest feature map again; inputs must be at least 128 px.
- DPT only takes timm ViT-style encoders ("tu-vit_small_patch16_224", ...).
"""

from __future__ import annotations

import inspect

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from segkit.ground.config import TASKS
from segkit.ground.errors import SegkitError
from segkit.models.local_weights import load_encoder_weights, local_weights_path
from segkit.models.classifier import TIMM_PREFIX, Classifier, TimmClassifier, check_forward, timm_classifier

SEG_CLS_HEAD_CLASSES = 2  # seg+cls: the tile head predicts empty (0) / object (1), see data.classes.TILE_CLASSES


def _key(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "")


def _registry() -> dict[str, type]:
    mapping = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", None)
    if mapping is None:  # older smp: fall back to the exported classes
        mapping = {n: getattr(smp, n) for n in ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3",
                                                  "DeepLabV3Plus", "Linknet", "MAnet", "PAN")
                   if hasattr(smp, n)}
    return {_key(cls.__name__): cls for cls in mapping.values()}


ARCHITECTURES: dict[str, type] = _registry()


def architecture_names() -> list[str]:
    """The class names create_model accepts (e.g. ["DPT", "DeepLabV3", ...])."""
    return sorted(cls.__name__ for cls in ARCHITECTURES.values())


def _weights(encoder_weights):
    if encoder_weights is None or str(encoder_weights).lower() in ("none", "null", "", "false"):
        return None
    return str(encoder_weights)


def _build(what: str, fn, *args, **kwargs):
    """Call an smp constructor, turning its bad-name/argument errors into one-line SegkitErrors."""
    try:
        return fn(*args, **kwargs)
    except KeyError as e:  # smp: "Wrong encoder name `x`, supported encoders: [...]"
        raise SegkitError(f"model.encoder: {str(e).strip(chr(39) + chr(34))[:600]}") from None
    except TypeError as e:  # unexpected keyword argument
        raise SegkitError(f"model ({what}): {e}") from None
    except ValueError as e:  # architecture/encoder combinations smp refuses
        raise SegkitError(f"model ({what}): {e}") from None
    except OSError as e:  # pretrained weights could not be fetched (offline, no cache)
        raise SegkitError(f"model.encoder_weights ({what}): could not load pretrained weights: {e}") from None


def create_model(arch: str = "Unet", encoder: str = "resnet18", encoder_weights: str | None = None,
                 in_channels: int = 3, classes: int = 1, task: str = "seg", **kw) -> nn.Module:
    """Build a segmentation model, a classifier or a segmenter with a tile-class head (see the module doc).

    ``encoder_weights`` is None/"none", a weight name smp knows ("imagenet"; fetched from the
    hub on first use) or a local weights file (segkit.models.local_weights). Extra keywords go to the smp constructor (e.g. decoder_channels) for
    "seg"/"seg+cls" (``cls_dropout``: dropout of the seg+cls head), or are ``pooling``/``dropout``
    of the head for "cls" (``arch`` is ignored there).
    """
    if task not in TASKS:
        raise SegkitError(f"model.task: unknown task {task!r}; valid: {', '.join(TASKS)}")
    if int(classes) < 1 or int(in_channels) < 1:
        raise SegkitError(f"model: classes ({classes}) and in_channels ({in_channels}) must be >= 1")
    local = local_weights_path(encoder_weights)
    if local is not None:  # built without hub weights, then the file's tensors copied into the encoder
        model = create_model(arch, encoder, None, in_channels=in_channels, classes=classes, task=task, **kw)
        load_encoder_weights(model.encoder, local)
        return model
    weights = _weights(encoder_weights)
    if task == "cls":
        head_kw = {k: kw.pop(k) for k in ("pooling", "dropout") if k in kw}
        depth = kw.pop("encoder_depth", 5)
        if kw:
            raise SegkitError(f"model (cls): unexpected options {sorted(kw)}; valid: pooling, dropout, encoder_depth")
        if str(encoder).startswith(TIMM_PREFIX):
            head_kw.pop("pooling", None)  # timm pools with its own global_pool
            return timm_classifier(str(encoder)[len(TIMM_PREFIX):], weights=weights, in_channels=int(in_channels),
                                   classes=int(classes), **head_kw)
        enc = _build(f"cls/{encoder}", get_encoder, encoder, in_channels=int(in_channels), depth=depth,
                     weights=weights)
        return Classifier(enc, int(classes), **head_kw)
    cls = ARCHITECTURES.get(_key(arch))
    if cls is None:
        raise SegkitError(f"model.arch: unknown architecture {arch!r}; valid: {', '.join(architecture_names())}")
    if kw.get("aux_params") is not None:  # the head's classes are fixed by seg+cls (empty / object)
        raise SegkitError("model: aux_params is not an option (use task: seg+cls for a tile-class head)")
    cls_dropout = kw.pop("cls_dropout", 0.2)
    if not str(encoder).startswith("tu-"):
        # smp forwards unknown keywords only to timm ("tu-") encoders and drops them otherwise
        known = set(inspect.signature(cls).parameters) - {"kwargs", "aux_params"}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise SegkitError(f"model ({cls.__name__}): unknown options {unknown}; valid: {', '.join(sorted(known))}")
    if task == "seg+cls":
        kw["aux_params"] = {"classes": SEG_CLS_HEAD_CLASSES, "dropout": float(cls_dropout)}
    return _build(f"{cls.__name__}/{encoder}", cls, encoder_name=encoder, encoder_weights=weights,
                  in_channels=int(in_channels), classes=int(classes), **kw)


def input_divisor(model: nn.Module) -> int:
    """The number the input height and width must be a multiple of (1 when any size works)."""
    inner = getattr(model, "module", model)
    if not getattr(inner, "requires_divisible_input_shape", True):
        return 1
    return int(getattr(getattr(inner, "encoder", None), "output_stride", 1) or 1)


def check_input_size(model: nn.Module, size: int | tuple[int, int], min_size: int = 0,
                     in_channels: int | None = None) -> None:
    """SegkitError naming data.size when the network input cannot go through ``model``.

    Done before training starts, so a bad --size fails in one line instead of in the first
    forward pass. ``min_size``: e.g. 128 for PAN (see the module doc). A timm classifier (no
    output stride to check) runs one blank forward instead, when ``in_channels`` is given.
    """
    inner = getattr(model, "module", model)
    if isinstance(inner, TimmClassifier):
        if in_channels is not None:
            check_forward(inner, in_channels, size if isinstance(size, int) else size[0])
        return
    h, w = (size, size) if isinstance(size, int) else size
    div = input_divisor(model)
    name = type(getattr(model, "module", model)).__name__
    if h % div or w % div:
        raise SegkitError(f"data.size: {h}x{w} must be a multiple of {div} for {name} "
                          f"(e.g. {max(div, h // div * div)})")
    if min(h, w) < min_size:
        raise SegkitError(f"data.size: {h}x{w} is below the minimum {min_size} for {name}")


def freeze_encoder(model: nn.Module, fraction: float, freeze_bn_stats: bool = False) -> int:
    """Freeze the first ``fraction`` (0..1) of the encoder's parameter tensors, in definition order.

    The seeds' trick: after training, freeze most of the encoder (e.g. 0.9) and tune the rest.
    Earlier freezes are undone first, so calling it again with a smaller fraction unfreezes.
    Returns the number of frozen tensors. BatchNorm running statistics still update in train
    mode unless ``freeze_bn_stats``: then norm layers whose weights are all frozen keep their
    statistics (momentum 0; restored when a later call unfreezes them). Call it again after
    building the model on resume: momentum is not part of the state dict.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise SegkitError(f"freeze_encoder: fraction must be in [0, 1], got {fraction}")
    inner = getattr(model, "module", model)  # DDP / EMA wrappers
    encoder = getattr(inner, "encoder", None)
    if encoder is None:
        raise SegkitError("freeze_encoder: the model has no .encoder (not built by create_model)")
    params = list(encoder.parameters())
    count = int(len(params) * float(fraction) + 1e-9)
    for i, p in enumerate(params):
        p.requires_grad_(i >= count)
    for module in encoder.modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        own = list(module.parameters(recurse=False))
        frozen = freeze_bn_stats and bool(own) and not any(p.requires_grad for p in own)
        if frozen and not hasattr(module, "_segkit_momentum"):
            module._segkit_momentum = module.momentum
            module.momentum = 0.0
        elif not frozen and hasattr(module, "_segkit_momentum"):
            module.momentum = module._segkit_momentum
            del module._segkit_momentum
    return count
