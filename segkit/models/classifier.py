"""Image classifiers for `--task cls`: an smp encoder with a pooled linear head, or any timm model.

- ``resnet18``, ``efficientnet-b0``, ... (smp encoder names): the smp encoder, global pooling,
  dropout and a linear layer (smp's ClassificationHead), the same encoders seg models use.
- ``tu-<timm name>`` (as smp names timm encoders): timm.create_model itself with its own head
  removed, so every timm architecture works, ViTs and other models without a feature pyramid
  included; our dropout + linear head sits on its pooled features.

Both expose ``.encoder`` (what freeze_encoder freezes) and ``.classification_head``, and map
images (N, C, H, W) to logits (N, classes).
"""

from __future__ import annotations

import difflib

import torch
from segmentation_models_pytorch.base import ClassificationHead
from torch import nn

from segkit.ground.errors import SegkitError

TIMM_PREFIX = "tu-"


class Classifier(nn.Module):
    """An smp/timm encoder, global pooling and a linear layer: images (N,C,H,W) -> logits (N, classes)."""

    def __init__(self, encoder: nn.Module, classes: int, pooling: str = "avg", dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.classification_head = ClassificationHead(
            in_channels=encoder.out_channels[-1], classes=classes, pooling=pooling, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(x)[-1])


class TimmClassifier(nn.Module):
    """A timm model without its classifier (pooled features) + dropout + linear: (N,C,H,W) -> (N, classes)."""

    def __init__(self, body: nn.Module, classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = body
        # models with a pre-logits stage (MobileNetV3's conv_head, ...) pool to head_hidden_size features
        features = getattr(body, "head_hidden_size", None) or body.num_features
        self.classification_head = nn.Sequential(nn.Dropout(p=float(dropout)), nn.Linear(int(features), int(classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(x))


def _timm_body(name: str, pretrained: bool, in_channels: int) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=int(in_channels))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            near = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(TIMM_PREFIX + n for n in near)}?)" if near else ""
            raise SegkitError(f"model.encoder: unknown timm model {TIMM_PREFIX}{name}{hint}") from None
        raise SegkitError(f"model.encoder ({TIMM_PREFIX}{name}): {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:  # offline without cached weights, or a bad combination
        raise SegkitError(f"model.encoder ({TIMM_PREFIX}{name}): {str(exc).splitlines()[0][:300]}") from None


def timm_classifier(name: str, *, weights: str | None, in_channels: int, classes: int,
                    dropout: float = 0.2) -> TimmClassifier:
    """``name`` without the tu- prefix; ``weights`` None (random init) or anything else (timm's pretrained)."""
    return TimmClassifier(_timm_body(name, weights is not None, in_channels), classes, dropout)


def check_forward(model: nn.Module, in_channels: int, size: int) -> None:
    """One forward on a blank (1, C, size, size) batch: a size the architecture cannot take (e.g. a ViT
    with a fixed patch grid) fails here in one line naming data.size, not in the first training step."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, int(in_channels), int(size), int(size)))
    except (RuntimeError, AssertionError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SegkitError(f"data.size: {size} px does not go through {type(model.encoder).__name__} ({detail})") from None
    finally:
        model.train(was_training)
