"""Many small images: start-up, memory per manifest row, windows/s, validation and inference images/s.

Generates FILES small PNG images (128 x 128 RGB, noisy discs) with 0/1 masks, then manifests of
ROWS rows for each size asked (rows cycle through the files under their own ids, as the issue's
"the same files listed ten times"); VAL rows form the validation fold, the rest train. Each
measurement runs in its own process, so every peak RSS (VmHWM) is that process's own:

    start    segkit.train.from_config.training_data + preprocess_for (manifest, header checks,
             folds, sampler, channel statistics): wall and CPU seconds with a cold header/grid cache
             (a fresh folder) and again warm; then one short epoch of WINDOWS random windows through
             the training DataLoader (loader_for, 4 workers, batch 16, the recipe's augmentation):
             windows/s, and each worker's peak RSS and private (copied) memory at the epoch's end.
    val      segkit.train.validate.validate of the VAL validation rows with a random-init Unet
             resnet18, against a bare batched loop over the same files (cv2.imread, normalize, the
             same model, channels_last, in batches of the same size and in segkit's precision
             (bf16 autocast where the CPU has it, as train.amp does), threshold, Dice per image).
    infer    segkit.infer.run.infer_images of INFER image files to one RLE CSV, against a bare
             batched loop (imread, model, threshold, segkit.io.rle.encode, csv rows); segkit twice,
             before the bare loop (every image's header read and cached first) and after it (cached).

    python tools/bench_many.py --rows 20,2000,20000,200000
    python tools/bench_many.py --quick            # 20 / 200 / 2,000 rows, fewer windows and images
    python tools/bench_many.py --main-python OLD/.venv/bin/python   # adds the code before, 2,000 rows

torch runs on one thread (the CPU slot's); the workers share that slot, so windows/s is a
one-core figure. "private" is Private_Clean + Private_Dirty of /proc/PID/smaps_rollup: the
pages a forked worker has copied from the main process (or made itself).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES, SIDE, FOV = 2000, 128, 128


def memory() -> dict:
    """MB: this process's peak RSS, current RSS and private memory."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    private = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean", "Private_Dirty")):
            private += int(line.split()[1])
    out["private"] = private / 1024
    return out


def write_files(root: Path) -> None:
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    if (root / "masks" / f"{FILES - 1:05d}.png").exists():
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for index in range(FILES):
        mask = np.zeros((SIDE, SIDE), np.uint8)
        for _ in range(4):
            r, c, radius = rng.integers(0, SIDE, 2).tolist() + [int(rng.integers(6, 20))]
            mask[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = 1
        image = rng.normal(70, 15, (SIDE, SIDE, 3)) + mask[:, :, None] * np.array([110, 40, 80])
        cv2.imwrite(str(root / "images" / f"{index:05d}.png"), np.clip(image, 0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{index:05d}.png"), mask)


def write_manifest(root: Path, rows: int, val: int) -> Path:
    path = root / f"manifest_{rows}.csv"
    if not path.exists():
        with open(path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["id", "image", "label", "fold"])
            for k in range(rows):  # the validation rows are distinct files (the first VAL ones)
                f = k % FILES
                out.writerow([f"r{k}", f"images/{f:05d}.png", f"masks/{f:05d}.png", 1 if k < val else 0])
    return path


def bench_config(manifest: Path, runs: Path, workers: int):
    from segkit.ground.config import load_config

    values = {"run.runs_dir": str(runs), "run.progress": False, "data.manifest": str(manifest), "data.fov_px": FOV,
              "data.size": FOV, "data.folds": 2, "data.val_fold": 1, "data.stats_windows": 16,
              "data.workers": workers, "model.encoder": "resnet18", "model.encoder_weights": None,
              "train.batch_size": 16, "infer.batch_size": 16, "infer.tta": "none", "infer.overlap_px": 0}
    return load_config(values=values)


class Probe:
    """The training dataset, each worker writing its memory figures to a file every 16 items."""

    def __init__(self, dataset, folder: str):
        self.dataset, self.folder = dataset, folder

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if index % 16 == 15:
            Path(self.folder, f"{os.getpid()}.json").write_text(json.dumps(memory()))
        return item


def child_start(args) -> dict:
    import torch

    from segkit.train import from_config as fc
    from segkit.train.hardware import loader_for

    torch.set_num_threads(1)
    config = bench_config(Path(args.manifest), Path(args.scratch) / "runs", args.workers)
    wall, cpu = time.perf_counter(), time.process_time()
    data = fc.training_data(config)
    preprocess = fc.preprocess_for(config, data)
    result = {"rows": args.rows, "start_wall": time.perf_counter() - wall, "start_cpu": time.process_time() - cpu,
              "after_start": memory()}
    if args.windows:
        augment = fc.augment_for(config, data, preprocess)
        dataset = fc.train_dataset(config, data, preprocess, augment, rank=0, world=1)
        dataset.length = args.windows
        folder = tempfile.mkdtemp(dir=args.scratch)
        loader = loader_for(Probe(dataset, folder), 16, args.workers, torch.device("cpu"))
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(len(batch["image"]) for batch in loader)
        result.update(windows=count, windows_per_s=count / (time.perf_counter() - wall),
                      epoch_main_cpu=time.process_time() - cpu,
                      workers=[json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))])
    result["main"] = memory()
    return result


def _model():
    import torch

    from segkit.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("Unet", "resnet18", None, in_channels=3).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():  # first passes build the kernels: neither side pays for them
        for batch in (16, 1):
            model(torch.zeros(batch, 3, FOV, FOV).contiguous(memory_format=torch.channels_last))
    return model


def _precision():
    """The precision segkit predicts in on this CPU (train.amp: bf16 where the CPU has it), for the bare loop too."""
    import torch

    from segkit.runs.device import amp_dtype

    dtype = amp_dtype(torch.device("cpu"), True)
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _bare_batches(paths, preprocess, batch):
    """Yield (paths, NCHW tensor) of the files, read and normalized as a user's own loop would."""
    import cv2
    import numpy as np
    import torch

    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        images = [preprocess(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in chunk]
        x = torch.from_numpy(np.stack(images).astype(np.float32)).permute(0, 3, 1, 2)
        yield chunk, x.contiguous(memory_format=torch.channels_last)  # the layout segkit's predictor uses


def _setup(args):
    """(config, training data, preprocess, model) of a val or infer child, on one thread."""
    import torch

    from segkit.train import from_config as fc

    torch.set_num_threads(1)
    config = bench_config(Path(args.manifest), Path(args.scratch) / "runs", 0)
    data = fc.training_data(config)
    return config, data, fc.preprocess_for(config, data), _model()


def child_val(args) -> dict:
    import cv2
    import numpy as np
    import torch

    from segkit.train import from_config as fc
    from segkit.train.validate import validate

    config, data, preprocess, model = _setup(args)
    wall, cpu = time.perf_counter(), time.process_time()
    scores = validate([(model, 1.0)], data.val_pairs, preprocess, fc.validation_settings(config), torch.device("cpu"))
    ours = (time.perf_counter() - wall, time.process_time() - cpu)
    paths = [Path(data.val_pairs.table.image[i]) for i in range(len(data.val_pairs))]
    wall, cpu = time.perf_counter(), time.process_time()
    dice = []
    with torch.inference_mode(), _precision():
        for chunk, x in _bare_batches(paths, preprocess, 16):
            masks = (torch.sigmoid(model(x).float())[:, 0] >= 0.5).numpy()
            for path, mask in zip(chunk, masks):
                truth = cv2.imread(str(path).replace("images", "masks"), cv2.IMREAD_UNCHANGED) > 0
                dice.append(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))
    bare = (time.perf_counter() - wall, time.process_time() - cpu)
    n = len(paths)
    return {"images": n, "segkit_wall": ours[0], "segkit_cpu": ours[1], "bare_wall": bare[0], "bare_cpu": bare[1],
            "segkit_per_s": n / ours[0], "bare_per_s": n / bare[0], "dice_segkit": scores["dice"],
            "dice_bare": float(np.mean(dice))}


def child_infer(args) -> dict:
    import torch

    from segkit.infer.run import Ensemble, Outputs, image_list, infer_images, infer_settings
    from segkit.io.rle import encode

    config, _, preprocess, model = _setup(args)
    paths = sorted((Path(args.manifest).parent / "images").glob("*.png"))[:args.infer]
    ensemble = Ensemble([(model, 1.0)], preprocess, FOV, FOV, 1)
    out = Path(tempfile.mkdtemp(dir=args.scratch))
    before = memory()

    def ours():  # the first pass reads (and caches) every image's header, the second finds them cached
        wall, cpu = time.perf_counter(), time.process_time()
        infer_images(ensemble, image_list(paths), Outputs(rle=out / "segkit.csv", overwrite=True),
                     infer_settings(config), torch.device("cpu"))
        return time.perf_counter() - wall, time.process_time() - cpu

    cold = ours()
    peak = memory()["VmHWM"]
    wall, cpu = time.perf_counter(), time.process_time()
    with open(out / "bare.csv", "w", newline="") as handle, torch.inference_mode(), _precision():
        writer = csv.writer(handle)
        writer.writerow(["id", "rle"])
        for chunk, x in _bare_batches(paths, preprocess, 16):
            masks = (torch.sigmoid(model(x).float())[:, 0] >= 0.5).numpy()
            for path, mask in zip(chunk, masks):
                writer.writerow([path.stem, encode(mask)])
    bare = (time.perf_counter() - wall, time.process_time() - cpu)
    warm = ours()
    rows = [open(out / name).read().splitlines() for name in ("segkit.csv", "bare.csv")]
    same = sum(a == b for a, b in zip(*rows)) / max(len(rows[1]), 1)  # rows equal (pixels at 0.5 may flip)
    n = len(paths)
    return {"images": n, "segkit_wall": warm[0], "segkit_cpu": warm[1], "bare_wall": bare[0], "bare_cpu": bare[1],
            "segkit_per_s": n / warm[0], "bare_per_s": n / bare[0], "same_csv": same, "cold_wall": cold[0],
            "cold_cpu": cold[1], "cold_per_s": n / cold[0], "rss_before": before["VmRSS"], "peak": peak}


def run_child(python: str, mode: str, args, **extra) -> dict:
    env = dict(os.environ, SEGKIT_CACHE_DIR=str(extra.pop("cache")))
    command = [python, __file__, "--child", mode, "--scratch", args.scratch, "--workers", str(args.workers)]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    # why: the driver: argument parsing, one child process per figure, the printed table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20,2000,20000,200000")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--infer", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--main-python", default=None, help="also measure start-up with this interpreter's segkit")
    parser.add_argument("--scratch", default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    if args.child:
        args.rows = sum(1 for _ in open(args.manifest)) - 1
        print(json.dumps({"start": child_start, "val": child_val, "infer": child_infer}[args.child](args)))
        return
    if args.quick:
        args.rows, args.windows, args.val, args.infer = "20,200,2000", 128, 100, 200
    args.scratch = args.scratch or tempfile.mkdtemp(prefix="bench-many-")
    root = Path(args.scratch) / "data"
    write_files(root)
    sizes = [int(v) for v in args.rows.split(",")]
    val = min(args.val, FILES)
    results = {"start": [], "val": None, "infer": None}
    for rows in sizes:
        manifest = write_manifest(root, rows, min(val, max(1, rows // 10)))
        cache = Path(args.scratch) / f"cache_{rows}"
        for label in ("cold", "warm"):
            got = run_child(sys.executable, "start", args, manifest=manifest, cache=cache,
                            windows=args.windows if label == "warm" else 0)
            results["start"].append({"code": "this", "cache": label, **got})
            print(json.dumps(results["start"][-1]), flush=True)
    if args.main_python:
        manifest = write_manifest(root, 2000, min(val, 200))
        got = run_child(args.main_python, "start", args, manifest=manifest, cache=Path(args.scratch) / "cache_main",
                        windows=args.windows)
        results["start"].append({"code": "main", "cache": "cold", **got})
        print(json.dumps(results["start"][-1]), flush=True)
    manifest = write_manifest(root, FILES, val)
    results["val"] = run_child(sys.executable, "val", args, manifest=manifest, cache=Path(args.scratch) / "cache_v")
    print(json.dumps({"val": results["val"]}), flush=True)
    results["infer"] = run_child(sys.executable, "infer", args, manifest=manifest, infer=args.infer,
                                 cache=Path(args.scratch) / "cache_v")
    print(json.dumps({"infer": results["infer"]}), flush=True)
    report(results)


def report(results: dict) -> None:
    print("\n| code | rows | cache | start-up wall (CPU) s | main RSS after start MB | main peak MB "
          "| windows/s | worker peak MB | worker private MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["start"]:
        workers = r.get("workers") or []
        peak = max((w["VmHWM"] for w in workers), default=0)
        private = max((w["private"] for w in workers), default=0)
        print(f"| {r['code']} | {r['rows']:,} | {r['cache']} | {r['start_wall']:.1f} ({r['start_cpu']:.1f}) "
              f"| {r['after_start']['VmRSS']:.0f} | {r['main']['VmHWM']:.0f} "
              f"| {r.get('windows_per_s', 0):.0f} | {peak:.0f} | {private:.0f} |")
    base = [r for r in results["start"] if r["code"] == "this" and r["cache"] == "warm"]
    if len(base) > 1:
        low, high = base[0], base[-1]
        per_row = (high["main"]["VmHWM"] - low["main"]["VmHWM"]) * 1024 * 1024 / (high["rows"] - low["rows"])
        print(f"\nmain peak RSS per manifest row ({low['rows']:,} -> {high['rows']:,} rows): {per_row:.0f} bytes")
    for name in ("val", "infer"):
        r = results[name]
        print(f"{name}: {r['images']} images, segkit {r['segkit_per_s']:.1f}/s ({r['segkit_wall']:.1f} s wall, "
              f"{r['segkit_cpu']:.1f} s CPU), bare loop {r['bare_per_s']:.1f}/s ({r['bare_wall']:.1f} s wall, "
              f"{r['bare_cpu']:.1f} s CPU): ratio {r['segkit_per_s'] / r['bare_per_s']:.2f}"
              + (f", Dice {r['dice_segkit']:.4f} vs {r['dice_bare']:.4f}" if name == "val" else "")
              + (f", rows equal to the bare loop's: {r['same_csv']:.0%}, peak RSS {r['peak']:.0f} MB (before "
                 f"{r['rss_before']:.0f}); first pass, headers read: {r['cold_per_s']:.1f}/s ({r['cold_wall']:.1f} s "
                 f"wall, {r['cold_cpu']:.1f} s CPU)" if name == "infer" else ""))


if __name__ == "__main__":
    main()
