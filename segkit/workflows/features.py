"""What suggest reads back for its picks: pooled encoder features (diversity) and montage panels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, clip_region
from segkit.infer.run import Ensemble, Settings, stream_probs
from segkit.io.images.raster import open_raster
from segkit.post.morphology import threshold as threshold_probs
from segkit.report.montage import prediction_panel
from segkit.report.overlay import display_size, to_display
from segkit.runs.device import autocast

FEATURE_SIDE_MAX = 512  # a region is read at the run's scale, at most this many pixels a side


def pooled_features(ensemble: Ensemble, regions: list[tuple[Path, Window]], device: torch.device) -> np.ndarray:
    """(N, D) global-average-pooled deepest encoder features of the first model, one row per region,
    each region read at the run's scale (fov_px -> size)."""
    model = ensemble.models[0][0]
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise SegkitError("label.diverse: the run's model has no encoder whose features could be pooled")
    out = []
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, False):
            for path, window in regions:
                raster = open_raster(path)
                side = min(FEATURE_SIDE_MAX, max(32, round(window.height * ensemble.size / ensemble.fov_px)))
                side = -(-side // 32) * 32  # encoders halve the size five times
                image = ensemble.preprocess(raster.read(window, out_size=(side, side)))
                image = image[:, :, None] if image.ndim == 2 else image
                x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32)).to(device)
                deepest = encoder(x)[-1]
                out.append(deepest.float().mean(dim=(2, 3))[0].cpu().numpy())
    finally:
        model.train(was)
    return np.stack(out)


def labelled_features(ensemble: Ensemble, images, taken: dict, device: torch.device) -> np.ndarray | None:
    """Features of the regions already labelled on the suggested images (the k-centre's first centres)."""
    regions = []
    for k, windows in taken.items():
        raster = open_raster(images[k][1])
        regions += [(images[k][1], clip_region(raster.height, raster.width, w)) for w in windows]
    return pooled_features(ensemble, regions, device) if regions else None


def prediction_panels(ensemble: Ensemble, picks, settings: Settings, device: torch.device) -> list[np.ndarray]:
    """One montage panel per pick (ranked): the region with the run's thresholded prediction over it."""
    panels = []
    for rank, pick in enumerate(picks, 1):
        raster = open_raster(pick.image)
        probs = np.concatenate([s for _, s in stream_probs(ensemble, raster, settings, device, region=pick.window)],
                               axis=1)
        mask = threshold_probs(probs[:1] if ensemble.targets else probs,
                               settings.threshold if ensemble.classes == 1 or ensemble.targets else None)
        height, width = display_size(pick.window, max_side=256, min_side=128)
        rgb = to_display(raster.read(pick.window, out_size=(height, width)))
        shown = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        panels.append(prediction_panel(rgb, shown, f"#{rank} {pick.image_id} {pick.score:.3f}"))
    return panels
