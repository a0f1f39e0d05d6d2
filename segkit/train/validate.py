"""Validation with the inference predictor itself, so the local score predicts the submission."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segkit.ground.geometry import Window
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.predict import predict_probs
from segkit.metrics.seg import DiceAccumulator
from segkit.post.morphology import threshold as threshold_probs


def activation_for(classes: int) -> str:
    """Binary models end in a sigmoid, multiclass ones in a softmax over classes."""
    return "sigmoid" if classes == 1 else "softmax"


@dataclass(frozen=True)
class ValidationSettings:
    """How validation predicts (the run's infer settings) and scores.

    fov_px / size: source pixels per tile and pixels the network sees; overlap_px, blend,
    batch_size, margin_px: the tiling (segkit.infer.predict.predict_strips); tta: view spec
    (segkit.infer.tta.parse_tta); threshold: binary cut (multiclass takes the argmax); amp:
    autocast; activation: sigmoid or softmax; classes: output channels of the model.
    """

    fov_px: int
    size: int
    overlap_px: int
    tta: str
    blend: str
    threshold: float
    batch_size: int
    amp: bool
    activation: str
    classes: int = 1
    margin_px: int = 0


def validate(models: list[tuple[torch.nn.Module, float]], pairs, preprocess, settings: ValidationSettings,
             device: torch.device, progress: bool = False) -> dict:
    """Dice over the validation rows (each row's region, or its whole image), predicted tile by tile.

    Returns {"dice": mean over rows, "per_image": {row id: dice}}; the models' train/eval modes
    are restored afterwards. ``progress``: per row, a bar on a terminal or plain lines in logs
    (``validate ROW_ID``).
    """
    s = settings
    predictor = EnsemblePredictor(models, s.tta, activation=s.activation, amp=s.amp)
    accumulator = DiceAccumulator(classes=s.classes)
    for pair in pairs:
        raster = pair.raster
        region = pair.row.region or Window(0, 0, raster.height, raster.width)
        probs = predict_probs(
            predictor, raster, fov_px=s.fov_px, size=s.size, overlap_px=s.overlap_px, preprocess=preprocess,
            blend=s.blend, batch_size=s.batch_size, device=device, region=region, margin_px=s.margin_px,
            progress=progress, progress_desc=f"validate {pair.row.id}",
        )
        mask = threshold_probs(probs, s.threshold if s.classes == 1 else None)
        target = pair.labels.read(region)
        accumulator.add(mask, target, image_id=pair.row.id)
    return {"dice": float(accumulator.mean()), "per_image": accumulator.per_image()}
