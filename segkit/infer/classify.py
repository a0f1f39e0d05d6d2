"""The classification predictor: rows (images, or windows of large images) -> class logits per ensemble member.

Shared by validation during training, `segkit infer --task cls`, `segkit oof` and calibration,
so the validation score is the score of what inference writes. Each row is read at network
size, run through every model under every TTA view and returned as per-member logits
(members = models x views, with the product of their weights), so temperature scaling can
apply to each member before the average, as it was fitted. Reading runs one batch ahead on a
background thread, as in the tiled predictor.

TTA views for a classifier only augment the input: a class does not move when the image is
flipped, so there is nothing to deaugment.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.infer.ensemble import evaluating
from segkit.infer.tta import augment
from segkit.runs.device import autocast, infer_batch_size


def class_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C) class logits of a classifier, or of the classification head of an smp model with aux_params."""
    out = model(x)
    if isinstance(out, (tuple, list)):  # smp seg+cls: (masks, labels)
        out = out[1]
    if out.dim() != 2:
        raise SegkitError(f"classifier output has shape {tuple(out.shape)}; expected (N, classes): is this a seg run?")
    return out


def _read(rows: Sequence, read: Callable, preprocess: Callable) -> np.ndarray:
    tiles = []
    for row in rows:
        image = preprocess(read(row))
        tiles.append(image[:, :, None] if image.ndim == 2 else image)
    return np.stack(tiles).astype(np.float32, copy=False)


def predict_class_logits(
    models: Sequence[tuple[nn.Module, float]],
    rows: Sequence,
    *,
    read: Callable[[object], np.ndarray],
    preprocess: Callable[[np.ndarray], np.ndarray],
    tta: Sequence[tuple[str, float]] = (("identity", 1.0),),
    batch_size: int | None = 32,
    device="cpu",
    amp: bool = False,
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor] = class_logits,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits float32 (members, rows, classes), member weights (members,) summing to 1).

    models: (module, weight) pairs; tta: (view, weight) pairs (weights are normalised); rows:
    anything ``read(row)`` turns into a raw HWC image at network size (e.g. a manifest row through
    segkit.data.cls_dataset.read_row); preprocess: raw -> float32 HWC; ``head`` maps (model,
    batch) to logits. The models' train/eval mode is restored afterwards.
    """
    # why: one loop over batches whose TTA, gating and accumulation share local state; the options are keywords.
    if not models or not rows:
        raise SegkitError("predict classes: no models or no rows")
    model_total = float(sum(w for _, w in models))
    view_total = float(sum(w for _, w in tta))
    weights = np.array([mw / model_total * vw / view_total for _, mw in models for _, vw in tta])
    device = torch.device(device)
    batch_size = infer_batch_size(batch_size, device)  # None: by device
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    out: list[list[np.ndarray]] = [[] for _ in weights]
    with evaluating([m for m, _ in models], device):
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segkit-read") as pool:
            pending = pool.submit(_read, batches[0], read, preprocess)
            for i in range(len(batches)):
                array = pending.result()
                if i + 1 < len(batches):  # read the next batch while the models run on this one
                    pending = pool.submit(_read, batches[i + 1], read, preprocess)
                x = torch.from_numpy(array).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)
                member = 0
                with torch.inference_mode(), autocast(device, amp):
                    for model, _ in models:
                        for view, _ in tta:
                            out[member].append(head(model, augment(x, view)).float())
                            member += 1
    # one copy to the host at the end: no wait on the device after each batch
    return torch.stack([torch.cat(parts) for parts in out]).cpu().numpy(), weights
