"""The seg+cls part of tools/bench_cls.py (run it from there: --part segcls).

1. configs/sample.yaml (the nuclei demo) trained as seg and as seg+cls, same seed, epochs and
   windows: the best validation Dice of each (does the tile-class head cost the masks anything?).
2. A mostly empty synthetic slide: the 512x512 nuclei image in one corner of a 2048x2048 field of
   the image's own dark background noise. `segkit infer --mask` with the seg+cls run, with
   infer.cls_gate off and on (best checkpoint, no TTA): wall and CPU seconds of the two processes, the
   streaming predictor's own CPU seconds gate off vs on (in this process, one thread: the process
   start and model load, a large share of a small slide's time, left out), and the tiles gated
   (counted by a GatedPredictor over the same grid); the two masks must be identical on every
   pixel that no gated tile covers.
3. (--part segcls_empty) The same gate timing with a head that has seen empty windows: every
   training window of the dense nuclei image holds nuclei, so part 2's head never learns "empty"
   (measured: it gives every slide tile an empty probability of 0.000 and gates nothing). Here
   the seg+cls run trains on the sample's rows plus a 1024x1024 slide of the image's own
   background with an empty mask (another noise seed than the test slide), validates on the
   sample's held-out rows as before, and infers on the same mostly empty test slide.
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


def background_field(side: int, seed: int) -> np.ndarray:
    """side x side pixels drawn from the nuclei image's own dark background."""
    nuclei = tifffile.imread(ROOT / "segkit" / "sample" / "nuclei.tif")
    background = nuclei[nuclei < np.percentile(nuclei, 40)]
    return np.random.default_rng(seed).choice(background, size=(side, side)).astype(np.uint8)


def make_slide(path: Path) -> tuple[int, int]:
    """The nuclei image at the top-left of a SLIDE x SLIDE field of its own background; returns its shape."""
    nuclei = tifffile.imread(ROOT / "segkit" / "sample" / "nuclei.tif")
    slide = background_field(SLIDE, seed=0)
    slide[:nuclei.shape[0], :nuclei.shape[1]] = nuclei
    tifffile.imwrite(path, slide, tile=(256, 256), compression="zlib")
    return nuclei.shape


def gated_cover(run: Path, slide: Path, gate: float, rounds: int = 2) -> tuple[np.ndarray, int, int, dict]:
    """(bool map of pixels covered by a gated tile, tiles gated, tiles, predictor CPU seconds) for the run's
    infer grid. The CPU seconds are the streaming predictor's alone (no process start, no model load, no
    writer), gate off and on alternately ``rounds`` times in this process with one torch thread; the least
    of each is kept (the machine is shared)."""
    import time

    import torch

    from segkit.ground.config import load_config
    from segkit.infer.ensemble import EnsemblePredictor
    from segkit.infer.gate import GatedPredictor
    from segkit.infer.image import load_run
    from segkit.infer.predict import predict_strips
    from segkit.io.images.raster import open_raster

    torch.set_num_threads(1)
    config = load_config(run / "config.yaml")
    ensemble = load_run(run, epochs="best", device="cpu")
    kept: list[bool] = []

    class Recording(GatedPredictor):
        def __call__(self, x):
            probs, keep = super().__call__(x)
            kept.extend(keep.tolist())
            return probs, keep

    raster = open_raster(slide)
    cpu = {"gate_off": [], "gate_on": []}
    for _ in range(rounds):
        for label in ("gate_off", "gate_on"):
            kept.clear()
            predictor = (EnsemblePredictor(ensemble.models, "none", amp=config.train.amp) if label == "gate_off" else
                         Recording(ensemble.models, "none", gate=gate, classes=ensemble.classes, amp=config.train.amp))
            started = time.process_time()
            for _ in predict_strips(predictor, raster, fov_px=ensemble.fov_px, size=ensemble.size,
                                    overlap_px=config.infer.overlap_px, preprocess=ensemble.preprocess,
                                    batch_size=config.infer.batch_size):
                pass
            cpu[label].append(time.process_time() - started)
    from segkit.data.windows import grid_windows

    core = ensemble.fov_px
    windows = grid_windows(raster.height, raster.width, core, min(config.infer.overlap_px, core // 2))
    assert len(windows) == len(kept), (len(windows), len(kept))  # the recorded tiles are the grid's
    cover = np.zeros((raster.height, raster.width), bool)
    for window, keep in zip(windows, kept):
        if not keep:
            cover[window.row:window.bottom, window.col:window.right] = True
    return cover, predictor.gated, predictor.tiles, {k: round(min(v), 2) for k, v in cpu.items()}


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
    report(workdir, {"part": "segcls", "epochs": epochs, "windows_per_epoch": windows, **results,
                     **gate_timing(workdir, runs / "nuclei_seg_cls", log, segkit=segkit, gate=gate)})


def part_segcls_empty(workdir: Path, log: Path, epochs: int, windows: int, *, segkit, report, gate: float = 0.5) -> None:
    runs = workdir / "runs"
    sample = ROOT / "segkit" / "sample"
    tifffile.imwrite(workdir / "background.tif", background_field(1024, seed=1), tile=(256, 256), compression="zlib")
    tifffile.imwrite(workdir / "background_mask.tif", np.zeros((1024, 1024), np.uint8))
    (workdir / "with_empty.csv").write_text(
        "id,image,label,region,fold\n"
        f"nuclei_train,{sample / 'nuclei.tif'},{sample / 'nuclei_mask.png'},\"0,0,384,512\",1\n"
        f"background,{workdir / 'background.tif'},{workdir / 'background_mask.tif'},,1\n"
        f"nuclei_val,{sample / 'nuclei.tif'},{sample / 'nuclei_mask.png'},\"384,0,128,512\",0\n")
    name = "nuclei_seg_cls_empty"
    wall, cpu = segkit("train", "--config", ROOT / "segkit" / "configs" / "sample.yaml", "--epochs", epochs, "--set",
                       f"train.windows_per_epoch={windows}", "--set", f"run.runs_dir={runs}", "--set",
                       "run.progress=false", "--set", f"data.manifest={workdir / 'with_empty.csv'}", "--task", "seg+cls",
                       "--name", name, log=log)
    report(workdir, {"part": "segcls_empty", "epochs": epochs, "windows_per_epoch": windows,
                     "seg+cls": {"best_val_dice": _best_dice(runs / name), "train_wall_s": round(wall, 1),
                                 "train_cpu_s": round(cpu, 1)},
                     **gate_timing(workdir, runs / name, log, segkit=segkit, gate=gate)})


def gate_timing(workdir: Path, run: Path, log: Path, *, segkit, gate: float) -> dict:
    """infer --mask on the mostly empty slide with the gate off and on: times, tiles gated, agreement."""
    slide = workdir / "mostly_empty.tif"
    shape = make_slide(slide)
    timing = {}
    for label, extra in (("gate_off", ()), ("gate_on", ("--set", f"infer.cls_gate={gate}"))):
        wall, cpu = segkit("infer", slide, "--run", run, "--mask", workdir / f"{label}.tif", "--overwrite", *INFER,
                           *extra, log=log)
        timing[label] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    off, on = tifffile.imread(workdir / "gate_off.tif"), tifffile.imread(workdir / "gate_on.tif")
    cover, gated, tiles, predictor_cpu = gated_cover(run, slide, gate)
    corner = np.zeros_like(cover)
    corner[:shape[0], :shape[1]] = True  # the nuclei image: gating must not lose its nuclei
    return {
        "run": run.name, "slide_px": SLIDE, "gate": gate, **timing, "tiles": tiles, "tiles_gated": gated,
        "cpu_ratio_on_off": round(timing["gate_on"]["cpu_s"] / timing["gate_off"]["cpu_s"], 3),
        "predictor_cpu_s": predictor_cpu,
        "predictor_cpu_ratio_on_off": round(predictor_cpu["gate_on"] / predictor_cpu["gate_off"], 3),
        "wall_ratio_on_off": round(timing["gate_on"]["wall_s"] / timing["gate_off"]["wall_s"], 3),
        "identical_where_not_gated": bool(np.array_equal(off[~cover], on[~cover])),
        "foreground_px_off": int(np.count_nonzero(off)), "foreground_px_on": int(np.count_nonzero(on)),
        "nuclei_corner_foreground_px_off": int(np.count_nonzero(off[corner])),
        "nuclei_corner_foreground_px_on": int(np.count_nonzero(on[corner])),
    }
