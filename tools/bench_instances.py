"""Objects, not just pixels: what body + border + contact targets with the watershed buy, and cost.

Three parts, measured side by side in one run (CPU time, fp32, torch threads fixed):

1. accuracy (``--part accuracy``): on the bundled nuclei sample, two runs with the same training
   budget (same windows, steps, size, augmentation, seed): (a) today's binary mask, objects =
   4-connected components of the thresholded mask (what --polygons writes today); (b) targets
   [body, border, contact] (data.targets: instances), objects = the seeded watershed. Scored on
   the held-out rows 384-511 (the validation fold, predicted as validation does): object F1 at
   IoU 0.5, the Data Science Bowl score, pixel Dice (the binary mask vs the body mask).
2. share (``--part share``): CPU time of the watershed as a share of `infer` on the nuclei image
   with run (b) (predictor strips timed apart from StripWatershed on the same strips).
3. memory (``--part memory``): peak RSS (VmHWM) of `infer` writing --instances (uint32 TIFF)
   vs --mask (binary, uint8 TIFF) on a synthetic SIZE x SIZE image, each in its own subprocess,
   with a fixed cheap model (a 1x1 convolution: this measures the output path, not a network);
   "3ch" is the same 3-output model written as a class mask, which separates what the two extra
   output channels cost the predictor's blending from what the watershed and id TIFF cost.

    python tools/bench_instances.py                       # all parts (a few minutes)
    python tools/bench_instances.py --part accuracy --epochs 10
    python tools/bench_instances.py --part memory --size 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAMES = ("body", "border", "contact")
REGION = (384, 0, 128, 512)  # the held-out rows of the bundled sample (fold 0)
TRAIN_REGION = (0, 0, 384, 512)  # its training rows (fold 1): where thresholds may be tuned


def _train(kind: str, runs_dir: Path, epochs: int, windows: int, size: int) -> Path:
    from segkit.ground.config import load_config
    from segkit.train.fit import fit

    overrides = [f"run.runs_dir={runs_dir}", f"run.name={kind}", "run.progress=false", f"data.fov_px={size}",
                 f"data.size={size}", f"train.epochs={epochs}", f"train.windows_per_epoch={windows}",
                 "train.amp=false", "infer.epochs=best"]
    if kind == "instances":
        overrides += ["data.manifest=sample-instances", "data.targets=instances"]
    return fit(load_config("sample", overrides))


def _predict(run: Path, region, epochs: str = "best"):
    import torch

    from segkit.ground.config import load_config
    from segkit.ground.geometry import Window
    from segkit.infer.run import infer_settings, load_ensemble, stream_probs
    from segkit.io.images.raster import open_raster
    from segkit.data.split import load_rows

    config = load_config(run / "config.yaml")
    settings = infer_settings(config)
    settings.progress = False
    ensemble = load_ensemble([run], epochs, torch.device("cpu"))
    raster = open_raster(load_rows("sample")[0].image)
    window = Window(*region) if region else None
    started = time.process_time()
    strips = list(stream_probs(ensemble, raster, settings, torch.device("cpu"), region=window))
    return strips, time.process_time() - started, settings


def _objects(kind: str, probs: np.ndarray, mask_thr: float, seed_thr: float, border_thr: float) -> np.ndarray:
    from segkit.metrics.objects import label_components
    from segkit.post.watershed import SeedSettings, watershed_instances

    if kind == "binary":
        return label_components(probs[0] >= mask_thr, connectivity=4)
    return watershed_instances(probs, NAMES, SeedSettings(mask=mask_thr, seed=seed_thr, border=border_thr))


def _tune(kind: str, run: Path, epochs: str, truth: np.ndarray) -> tuple:
    """Thresholds with the best object F1 on the TRAINING rows 0-383 (never the held-out ones):
    the mask threshold (a), the mask, seed and border thresholds (b)."""
    from segkit.metrics.objects import object_scores

    strips, _, _ = _predict(run, TRAIN_REGION, epochs)
    probs = np.concatenate([p for _, p in strips], axis=1)
    grid = [(m, 0.0, 0.0) for m in (0.3, 0.4, 0.5, 0.6, 0.7)] if kind == "binary" else [
        (m, s, b) for m in (0.4, 0.5) for s in (0.5, 0.6, 0.7, 0.8, 0.9) for b in (0.3, 0.5, 0.7) if s >= m]
    scored = [(object_scores(_objects(kind, probs, *g), truth)["f1"], g) for g in grid]
    return max(scored, key=lambda item: item[0])[1]


def accuracy(args, runs_dir: Path) -> dict:
    from segkit.data.split import load_rows
    from segkit.ground.geometry import Window
    from segkit.io.labels.instances import open_instances
    from segkit.io.images.raster import open_raster
    from segkit.metrics.objects import object_scores
    from segkit.metrics.seg import dice_score

    row = load_rows("sample-instances")[0]
    source = open_instances(row.label, open_raster(row.image))
    truth, train_truth = source.read_instances(Window(*REGION)), source.read_instances(Window(*TRAIN_REGION))
    out = {}
    for kind in ("binary", "instances"):
        cpu, run = time.process_time(), runs_dir / kind
        if not (run / "metrics.jsonl").exists() or args.retrain:  # --work of an earlier run: score it again
            run = _train(kind, runs_dir, args.epochs, args.windows, args.size)
        cpu = time.process_time() - cpu
        # best: the checkpoint validation picked (val_dice for a, val_object_f1 for b, both on these
        # rows); last: the final epoch, free of that choice; +tuned: thresholds tuned on training rows
        for epochs, tuned in (("best", False), ("last:1", False), ("last:1", True)):
            strips, _, settings = _predict(run, REGION, epochs)
            probs = np.concatenate([p for _, p in strips], axis=1)
            s = settings.seeds
            thresholds = _tune(kind, run, epochs, train_truth) if tuned else (s.mask, s.seed, s.border)
            objects = _objects(kind, probs, *thresholds)
            scores = object_scores(objects, truth)
            mask = probs[0] >= thresholds[0]
            key = f"{kind}@{epochs}" + ("+tuned" if tuned else "")
            out[key] = {"object_f1": scores["f1"], "dsb": scores["dsb"], "n_pred": scores["n_pred"],
                        "n_true": scores["n_true"], "dice": float(dice_score(mask.astype(np.uint8), truth > 0)),
                        "thresholds": thresholds, "train_cpu_s": round(cpu, 1), "run": str(run)}
            print(json.dumps({key: out[key]}), flush=True)
    return out


def share(run: Path) -> dict:
    from segkit.post.watershed import StripWatershed

    strips, predict_cpu, settings = _predict(run, None)
    height, width = sum(p.shape[1] for _, p in strips), strips[0][1].shape[2]
    started = time.process_time()
    stream = StripWatershed(height, width, NAMES, settings.seeds)
    n = sum(1 for _ in stream(strips))
    ws_cpu = time.process_time() - started
    return {"predict_cpu_s": round(predict_cpu, 3), "watershed_cpu_s": round(ws_cpu, 3), "strips": n,
            "watershed_share": round(ws_cpu / (predict_cpu + ws_cpu), 4)}


# ---------------------------------------------------------------- memory (subprocesses)


def _synthetic(path: Path, size: int) -> None:
    """SIZE x SIZE uint8 tiled TIFF of touching blobs, written tile row by tile row."""
    import tifffile

    tile = 512

    def tiles():
        yy, xx = np.mgrid[:tile, :tile]
        for r in range(0, size, tile):
            for c in range(0, size, tile):
                y, x = (yy + r) % 20 - 10, (xx + c) % 34 - 17  # pairs of touching discs every 34 px
                d = np.minimum((y * y + (x + 8) ** 2), (y * y + (x - 8) ** 2))
                yield (255 * (d <= 64)).astype(np.uint8)

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(tile, tile), compression="zlib")


def _child(kind: str, image: Path, out_dir: Path) -> None:
    import torch

    from segkit.infer.run import Ensemble, Outputs, Settings, infer_images
    from segkit.post import watershed

    torch.set_num_threads(1)
    classes = 1 if kind == "binary" else 3  # "3ch": a 3-output model through the class-mask path
    model = torch.nn.Conv2d(1, classes, 1)
    with torch.no_grad():  # body = bright; border and contact: never (seeds = bodies)
        model.weight.zero_()
        model.weight[0] = 20.0
        model.bias.fill_(-10.0)
    ensemble = Ensemble([(model.eval(), 1.0)], lambda raw: raw.astype(np.float32) / 255, fov_px=512, size=512,
                        classes=classes, targets=NAMES if kind == "instances" else ())
    spent = {"watershed": 0.0}
    push = watershed.StripWatershed._push

    def timed(self, *a):
        t = time.process_time()
        try:
            return push(self, *a)
        finally:
            spent["watershed"] += time.process_time() - t

    watershed.StripWatershed._push = timed
    outputs = Outputs(instances=str(out_dir / "ids.tif"), overwrite=True) if kind == "instances" \
        else Outputs(mask=str(out_dir / "m.tif"), overwrite=True)
    settings = Settings(overlap_px=32, blend="gaussian", tta="none", threshold=0.5, batch_size=4, amp=False,
                        progress=False)
    started, wall = time.process_time(), time.time()
    infer_images(ensemble, [("synthetic", image)], outputs, settings, torch.device("cpu"))
    print(json.dumps({"kind": kind, "cpu_s": round(time.process_time() - started, 1),
                      "wall_s": round(time.time() - wall, 1), "watershed_cpu_s": round(spent["watershed"], 1),
                      "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """Peak RSS of this process since its exec: VmHWM (ru_maxrss keeps the forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory(size: int, work: Path, gdal_cache_mb: int) -> dict:
    image = work / "synthetic.tif"
    if not image.exists():
        _synthetic(image, size)
    out = {}
    for kind in ("binary", "3ch", "instances"):
        done = subprocess.run([sys.executable, __file__, "--child", kind, "--image", str(image), "--out", str(work)],
                              capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "GDAL_CACHEMAX": str(gdal_cache_mb)})
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(out[kind]), flush=True)
    out["rss_ratio"] = round(out["instances"]["peak_rss_mb"] / out["binary"]["peak_rss_mb"], 3)
    out["rss_ratio_vs_3ch"] = round(out["instances"]["peak_rss_mb"] / out["3ch"]["peak_rss_mb"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "accuracy", "share", "memory"], default="all")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--windows", type=int, default=128, help="training windows per epoch")
    parser.add_argument("--size", type=int, default=128, help="window = network size, px (full resolution)")
    parser.add_argument("--image-size", type=int, default=20000, help="memory part: synthetic image side, px")
    parser.add_argument("--work", default=None, help="folder for runs and files (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gdal-cache-mb", type=int, default=256,
                        help="memory part: GDAL_CACHEMAX of the children (GDAL's default, 5%% of RAM, keeps "
                             "written tiles until it is full: a uint32 TIFF fills 4x more of it than a uint8 one)")
    parser.add_argument("--retrain", action="store_true", help="train again even when --work holds the runs")
    parser.add_argument("--child", choices=["binary", "3ch", "instances"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, Path(args.image), Path(args.out))
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_instances_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f}, torch threads {args.threads}, work {work}", flush=True)
    result = {}
    if args.part in ("all", "accuracy"):
        result["accuracy"] = accuracy(args, work / "runs")
        for epochs in ("best", "last:1", "last:1+tuned"):
            a, b = result["accuracy"][f"binary@{epochs}"], result["accuracy"][f"instances@{epochs}"]
            result["accuracy"][f"gain_object_f1@{epochs}"] = round(b["object_f1"] - a["object_f1"], 4)
            result["accuracy"][f"dice_change@{epochs}"] = round(b["dice"] - a["dice"], 4)
    if args.part in ("all", "share"):
        result["share"] = share(work / "runs" / "instances")
    if args.part in ("all", "memory"):
        result["memory"] = memory(args.image_size, work, args.gdal_cache_mb)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
