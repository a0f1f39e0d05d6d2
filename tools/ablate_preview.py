"""The copy-paste preview of docs/ablation.md: training windows before and after object copy-paste.

Windows are drawn as training draws them (the base recipe's sampler and channels, no other
augmentation); the same windows then go through the copy-paste transform the copy_paste arm trains
with, its probability raised to 1 so every window shows pastes. Outlines: label objects in the
class-1 colour; pasted objects (label objects mostly repainted by the paste) in the class-2 colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import ablate_arms as arms_mod
from segkit.data.augment import create_augment
from segkit.data.inputs import draw_samples
from segkit.metrics.objects import label_components
from segkit.report.preview import write_preview
from segkit.train import from_config as fc


def write(dataset, out: Path, path: Path, count: int = 6, seed: int = 0) -> str:
    """Write the preview PNG (pairs: before | after) to ``path``; returns a line saying what it shows."""
    base = arms_mod.base_config(dataset, seed, out / "runs")
    arm = next(a for a in arms_mod.ARMS if a.name == "copy_paste")
    config = arms_mod.arm_config(base, arm, dataset)
    config = arms_mod.with_values(config, data__copy_paste={**config.data.copy_paste, "p": 1.0})
    config = fc.with_fov(config)
    data = fc.training_data(config)
    preprocess = fc.preprocess_for(config, data)
    paste = fc.augment_for(config, data, preprocess).copy_paste
    windows = draw_samples(data, preprocess, create_augment(None, seed=seed), size=config.data.size, count=count,
                           seed=seed)
    samples, pasted_objects = [], 0
    for image, mask in windows:
        after, after_mask = paste(image, mask)
        shown = after_mask.copy()
        changed = np.abs(after - image).max(axis=-1) > 1e-3
        ids = label_components(after_mask > 0)
        hits = np.bincount(ids[changed & (ids > 0)], minlength=ids.max() + 1)
        sizes = np.bincount(ids.ravel(), minlength=ids.max() + 1)
        pasted = (hits > sizes // 3) & (np.arange(len(sizes)) > 0)  # objects mostly repainted: pasted
        shown[pasted[ids]] = 2
        pasted_objects += int(pasted.sum())
        samples += [(image, mask), (after, shown)]
    write_preview(samples, path, columns=4, thickness=1)
    return (f"{path}: {count} {dataset.name} windows ({config.data.size} px) before | after copy-paste, bank of "
            f"{len(paste.bank)} objects; {pasted_objects} pasted objects outlined in the second colour")
