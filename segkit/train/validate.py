"""Validation with the inference predictor itself, so the local score predicts the submission."""

from __future__ import annotations

import torch

from segkit.ground.geometry import Window
from segkit.infer.predict import predict_probs
from segkit.infer.tta import parse_tta
from segkit.metrics.seg import DiceAccumulator
from segkit.post.morphology import threshold as threshold_probs


def validate(
    models: list[tuple[torch.nn.Module, float]],
    pairs,
    preprocess,
    *,
    fov_px: int,
    size: int,
    overlap_px: int,
    tta: str,
    blend: str,
    threshold: float,
    batch_size: int,
    device: torch.device,
    amp: bool,
    activation: str,
    classes: int = 1,
) -> dict:
    """Dice over the validation rows (each row's region, or its whole image), predicted tile by tile."""
    for model, _ in models:
        model.eval()
    accumulator = DiceAccumulator(classes=classes)
    for pair in pairs:
        raster = pair.raster
        region = pair.row.region or Window(0, 0, raster.height, raster.width)
        probs = predict_probs(
            models, raster, fov_px=fov_px, size=size, overlap_px=overlap_px, preprocess=preprocess,
            tta=parse_tta(tta), blend=blend, batch_size=batch_size, device=device, amp=amp,
            activation=activation, region=region,
        )
        mask = threshold_probs(probs, threshold if classes == 1 else None)
        target = pair.labels.read(region)
        accumulator.add(mask, target, image_id=pair.row.id)
    for model, _ in models:
        model.train()
    return {"dice": float(accumulator.mean()), "per_image": accumulator.per_image()}

