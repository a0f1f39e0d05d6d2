"""predict_image: one image through your own model(s) or a run, into segkit's writers or an array.

The Python entry to the same streaming path as `segkit infer`: tiles, blending, TTA, the same
post-processing and the same atomic writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from torch import nn

from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.grids import THUMB_SIDE
from segkit.data.preprocess import Preprocess
from segkit.ground.errors import SegkitError
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.predict import predict_probs
from segkit.ground.config import load_config
from segkit.ground.settings import InferConfig, RunConfig, TrainConfig
from segkit.infer.run import Ensemble, Outputs, infer_images, infer_settings, load_ensemble
from segkit.io.images.raster import open_raster
from segkit.models.activation import output_activation
from segkit.runs.device import pick_device


def load_run(run: str | Path, epochs: str = "last:3", device: str = "auto", soup: bool = False) -> Ensemble:
    """A run directory's models (the checkpoints ``epochs`` picks: last:K, best, all, 8,9,10),
    preprocessing, field of view, network size and classes, ready for predict_image."""
    path = Path(run)
    return load_ensemble([path], epochs, pick_device(device), soup=soup)


def _as_ensemble(model, preprocess, fov_px, size, classes, image_path: Path) -> Ensemble:
    if isinstance(model, Ensemble):
        return model
    if isinstance(model, (str, Path)):
        return load_run(model)
    if fov_px is None:
        raise SegkitError("predict_image: give fov_px (source pixels a tile covers) for your own model")
    if isinstance(model, nn.Module):
        pairs = [(model, 1.0)]
    else:
        pairs = [m if isinstance(m, tuple) else (m, 1.0) for m in model]
    if preprocess is None:  # segkit's default channels: each band's default window, resolved on the thumbnail
        raster = open_raster(image_path)
        specs = parse_channels(None, bands=raster.channels, dtype=raster.dtype)
        preprocess = Preprocess(resolve_channels(specs, raster.thumbnail(THUMB_SIDE)[0]))
    return Ensemble(pairs, preprocess, int(fov_px), int(size or fov_px), int(classes))


def predict_image(
    image: str | Path,
    model: nn.Module | Sequence | Ensemble | str | Path,
    *,
    rle: Optional[str | Path] = None,
    mask: Optional[str | Path] = None,
    probs: Optional[str | Path] = None,
    polygons: Optional[str | Path] = None,
    preprocess=None,
    fov_px: Optional[int] = None,
    size: Optional[int] = None,
    classes: int = 1,
    tta: str = InferConfig.tta,
    threshold: float = InferConfig.threshold,
    overlap_px: Optional[int] = InferConfig.overlap_px,
    blend: str = InferConfig.blend,
    batch_size: int = InferConfig.batch_size,
    device: str = RunConfig.device,
    amp: bool = TrainConfig.amp,
    overwrite: bool = False,
) -> np.ndarray | list[Path]:
    """Predict ``image`` with ``model`` and write the chosen outputs, or return the probabilities.

    model: a torch module (e.g. your smp model, logits out), a list of modules or (module, weight)
        pairs, a run directory, or load_run()'s result (which brings its own preprocess, fov_px,
        size and classes).
    rle / mask / probs / polygons: output files (Kaggle RLE CSV with id = the image's stem, class
        mask TIFF, uint8 probability TIFF, GeoJSON); written atomically, refused if they exist
        unless ``overwrite``. With none of them, returns the (C, H, W) float32 probabilities
        (for images that fit in memory).
    preprocess: raw HWC tile -> float32 HWC network input (see Preprocess); default each band
        scaled by its default window (the dtype range; integers wider than 8 bits: the 1st-99th
        percentile of the image's thumbnail). fov_px: source pixels per tile; size: pixels the model sees
        (default fov_px); classes: 1 = sigmoid output, N > 1 = softmax over N classes.
    tta, threshold, overlap_px, blend, batch_size, amp: as `segkit infer` (its --help).
    """
    # why: the one-call public API (like smp's and MONAI's inferers): every option a keyword with the default of
    # its config key.
    image = Path(image)
    ensemble = _as_ensemble(model, preprocess, fov_px, size, classes, image)
    torch_device = pick_device(device)
    if not any((rle, mask, probs, polygons)):
        predictor = EnsemblePredictor(ensemble.models, tta, amp=amp,
                                      activation=output_activation(ensemble.classes, ensemble.targets))
        return predict_probs(predictor, open_raster(image), fov_px=ensemble.fov_px, size=ensemble.size,
                             overlap_px=overlap_px, preprocess=ensemble.preprocess, blend=blend,
                             batch_size=batch_size, device=torch_device)
    outputs = Outputs(Path(rle) if rle else None, str(polygons) if polygons else None, str(mask) if mask else None,
                      str(probs) if probs else None, overwrite)
    settings = infer_settings(load_config(None, values={
        "infer.overlap_px": overlap_px, "infer.blend": blend, "infer.tta": tta, "infer.threshold": threshold,
        "infer.batch_size": batch_size, "train.amp": amp, "run.progress": False}))
    return infer_images(ensemble, [(image.stem, image)], outputs, settings, torch_device)
