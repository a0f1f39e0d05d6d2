"""Raw window -> network input: channel stacking then per-channel normalization.

The same object runs in training, validation and inference; it is saved in the run
directory (preprocess.json) so that `infer` reproduces exactly what the network saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from segkit.data.channels import (
    ChannelSpec,
    specs_from_dicts,
    specs_to_dicts,
    stack_channels,
)
from segkit.data.stats import normalize
from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_json


class Preprocess:
    """The preprocess contract: ``preprocess(raw) -> image``, used identically in training,
    validation and inference.

    raw: an H x W x C numpy array of the raster's own dtype (uint8, uint16, int16 HU, float32,
    ...), exactly as ``Raster.read(window, out_size)`` returns it, C = the image's bands.
    image: an H x W x C' float32 array, C' = ``in_channels`` (one per channel spec), the
    network input before the NCHW transpose. Two steps, usable apart: ``stack(raw)`` maps each
    channel spec's intensity window (band, low..high or a CT preset, gamma) to [0, 1] (what
    augmentations see); ``normalize(image)`` subtracts the per-channel mean and divides by the
    std (identity when no statistics are set). Picklable (DataLoader workers) and saved in the
    run directory as preprocess.json, so `infer` reproduces exactly what the network saw. Any
    callable honouring the same contract can replace it in predict_strips / predict_image.
    """

    def __init__(self, channels: list[ChannelSpec], mean: Optional[list] = None, std: Optional[list] = None):
        self.channels = channels
        self.mean = mean
        self.std = std

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def with_stats(self, mean: list, std: list) -> "Preprocess":
        return Preprocess(self.channels, mean, std)

    def stack(self, raw: np.ndarray) -> np.ndarray:
        """Channel windows only: HWC float32 in [0, 1], the range augmentations expect."""
        return stack_channels(raw, self.channels)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return image if self.mean is None else normalize(image, self.mean, self.std)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.normalize(self.stack(raw))

    def to_dict(self) -> dict:
        return {"channels": specs_to_dicts(self.channels), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(specs_from_dicts(data["channels"]), data.get("mean"), data.get("std"))

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Preprocess":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            raise SegkitError(f"{path}: cannot read the preprocessing spec ({exc})") from None
