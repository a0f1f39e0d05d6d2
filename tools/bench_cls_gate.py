"""The seg+cls part of tools/bench_cls.py (run it from there: --part segcls).

1. configs/sample.yaml (the nuclei demo) trained as seg and as seg+cls, same seed, epochs and
   windows: the best validation Dice of each (does the tile-class head cost the masks anything?).
2. A mostly empty synthetic slide: the 512x512 nuclei image in one corner of a 2048x2048 field of
   the image's own dark background noise. `segkit infer --mask` with the seg+cls run, with
   infer.cls_gate off and on (best checkpoint, no TTA): wall and CPU seconds, and the tiles gated (counted by a
   GatedPredictor over the same grid in this process); the two masks must be identical on every
   pixel that no gated tile covers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SLIDE = 2048
INFER = ("--epochs", "best", "--tta", "none")  # one checkpoint, no TTA: the gate's own cost, quickly


def _best_dice(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return round(max(line["val_dice"] for line in lines), 4)


def make_slide(path: Path) -> tuple[int, int]:
    """The nuclei image at the top-left of a SLIDE x SLIDE field of its own background; returns its shape."""
    nuclei = tifffile.imread(ROOT / "segkit" / "sample" / "nuclei.tif")
    background = nuclei[nuclei < np.percentile(nuclei, 40)]
    rng = np.random.default_rng(0)
    slide = rng.choice(background, size=(SLIDE, SLIDE)).astype(np.uint8)
    slide[:nuclei.shape[0], :nuclei.shape[1]] = nuclei
    tifffile.imwrite(path, slide, tile=(256, 256), compression="zlib")
    return nuclei.shape


def gated_cover(run: Path, slide: Path, gate: float) -> tuple[np.ndarray, int, int]:
    """(bool map of pixels covered by a gated tile, tiles gated, tiles) for the run's infer grid."""
    from segkit.ground.config import load_config
    from segkit.infer.gate import GatedPredictor
    from segkit.infer.image import load_run
    from segkit.infer.predict import predict_strips
    from segkit.io.raster import open_raster

    config = load_config(run / "config.yaml")
    ensemble = load_run(run, epochs="best", device="cpu")
    kept: list[bool] = []

    class Recording(GatedPredictor):
        def __call__(self, x):
            probs, keep = super().__call__(x)
            kept.extend(keep.tolist())
            return probs, keep

    predictor = Recording(ensemble.models, "none", gate=gate, classes=ensemble.classes,
                          amp=config.train.amp)
    raster = open_raster(slide)
    for _ in predict_strips(predictor, raster, fov_px=ensemble.fov_px, size=ensemble.size,
                            overlap_px=config.infer.overlap_px, preprocess=ensemble.preprocess,
                            batch_size=config.infer.batch_size):
        pass
    from segkit.data.windows import grid_windows

    core = ensemble.fov_px
    windows = grid_windows(raster.height, raster.width, core, min(config.infer.overlap_px, core // 2))
    cover = np.zeros((raster.height, raster.width), bool)
    for window, keep in zip(windows, kept):
        if not keep:
            cover[window.row:window.bottom, window.col:window.right] = True
    return cover, predictor.gated, predictor.tiles


def part_segcls(workdir: Path, log: Path, epochs: int, windows: int, *, segkit, report, gate: float = 0.5) -> None:
    runs = workdir / "runs"
    common = ("--config", ROOT / "segkit" / "configs" / "sample.yaml", "--epochs", epochs, "--set",
              f"train.windows_per_epoch={windows}", "--set", f"run.runs_dir={runs}", "--set", "run.progress=false")
    results = {}
    for task in ("seg", "seg+cls"):
        name = "nuclei_" + task.replace("+", "_")
        wall, cpu = segkit("train", *common, "--task", task, "--name", name, log=log)
        results[task] = {"best_val_dice": _best_dice(runs / name), "train_wall_s": round(wall, 1),
                         "train_cpu_s": round(cpu, 1)}
    slide = workdir / "mostly_empty.tif"
    make_slide(slide)
    run = runs / "nuclei_seg_cls"
    timing = {}
    for label, extra in (("gate_off", ()), ("gate_on", ("--set", f"infer.cls_gate={gate}"))):
        wall, cpu = segkit("infer", slide, "--run", run, "--mask", workdir / f"{label}.tif", "--overwrite", *INFER,
                           *extra, log=log)
        timing[label] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    off, on = tifffile.imread(workdir / "gate_off.tif"), tifffile.imread(workdir / "gate_on.tif")
    cover, gated, tiles = gated_cover(run, slide, gate)
    report(workdir, {
        "part": "segcls", "epochs": epochs, "windows_per_epoch": windows, **results, "slide_px": SLIDE, "gate": gate,
        **timing, "tiles": tiles, "tiles_gated": gated,
        "cpu_ratio_on_off": round(timing["gate_on"]["cpu_s"] / timing["gate_off"]["cpu_s"], 3),
        "wall_ratio_on_off": round(timing["gate_on"]["wall_s"] / timing["gate_off"]["wall_s"], 3),
        "identical_where_not_gated": bool(np.array_equal(off[~cover], on[~cover])),
        "foreground_px_off": int(np.count_nonzero(off)), "foreground_px_on": int(np.count_nonzero(on)),
    })
