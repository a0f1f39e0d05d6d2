"""Benchmark: is segkit ready to keep a GPU fed? Measured on whatever device is present.

1. predictor host time per tile, before and after moving resize, weighting and blending to the
   model's device: a near-free predictor (a sigmoid of the input's first channel) leaves only the
   predictor's own work (upload, resize, blend, strips). "Before" is another checkout of segkit
   (``--before DIR``, e.g. ``git archive main segkit | tar -x -C /tmp/before``), imported in a child
   process; the two alternate over ``--rounds`` rounds, each keeps its best, ratios are printed.
2. the same with a real network (Unet-resnet18), to show nothing else got slower.
3. training steps/s of that network at 512 px against the training loader's windows/s with 0, 1,
   ... workers at 512 px: the workers a device needs = steps/s x batch / windows/s per worker.

    python tools/bench_gpu_ready.py --before /tmp/before           # all three, CPU here
    python tools/bench_gpu_ready.py --before /tmp/before --only predictor --rounds 5

Wall seconds and CPU seconds are printed side by side (CPU seconds are less sensitive to other
load on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (image side px, fov_px, size, channels out, overlap_px, network)
    "downscale2": (5120, 512, 256, 1, 64, False),
    "fullres": (5120, 512, 512, 1, 64, False),
    "3 classes": (5120, 512, 256, 3, 64, False),
    "unet-r18": (1024, 512, 256, 1, 64, True),
}


class ConstantRaster:
    """A raster whose every read returns the same ready tile (a copy): reading costs next to nothing,
    so what is timed is the predictor's own work."""

    def __init__(self, side: int, seed: int = 0):
        import numpy as np

        self.height = self.width = int(side)
        self.channels, self.dtype, self.path = 1, np.uint8, "memory"
        self.rng, self.tiles = np.random.default_rng(seed), {}

    def read(self, window, out_size=None):
        shape = tuple(out_size) if out_size is not None else (window.height, window.width)
        if shape not in self.tiles:
            self.tiles[shape] = self.rng.normal(120, 30, (*shape, 1)).clip(0, 255).astype(self.dtype)
        return self.tiles[shape].copy()


def _op_timer():
    """A dispatch mode that times every torch operation (aten op) the predictor runs.

    On a GPU those operations are queued and run on the device while the host goes on; the rest
    of the predictor's time (Python, OpenCV and numpy work, copies of results to host memory) keeps
    the host busy and the GPU waiting. Run on the CPU, ``seconds`` is the torch operations' share
    and the remainder the host's share. Copies to host memory count as host work. This mode's own
    Python call per operation lands in the host share: the code with more torch operations is
    penalised, not favoured.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpTimer(TorchDispatchMode):
        seconds, cpu_seconds, ops = 0.0, 0.0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            start, start_cpu = time.perf_counter(), time.thread_time()
            out = func(*args, **kwargs)
            if func is not torch.ops.aten._to_copy.default:  # to_copy: the host copy of a result
                OpTimer.seconds += time.perf_counter() - start
                OpTimer.cpu_seconds += time.thread_time() - start_cpu
                OpTimer.ops += 1
            return out

    return OpTimer()


def child_predictor(case: str, device: str) -> dict:
    """Run in a child process whose segkit is the one under test: seconds per tile of one image.
    ``device`` "host": on the CPU, the time outside torch operations (_op_timer), the host's share of a GPU run."""
    import contextlib

    import numpy as np
    import torch

    from segkit.infer.predict import predict_strips

    side, fov, size, channels, overlap, network = CASES[case]
    if network:
        from segkit.models.factory import create_model

        torch.manual_seed(0)
        model = create_model("Unet", "resnet18", None, in_channels=1, classes=channels).eval()
        predictor = [(model, 1.0)]
    else:
        def predictor(x):
            return torch.sigmoid(x[:, :1]).expand(-1, channels, -1, -1).float()
    kwargs = dict(fov_px=fov, size=size, overlap_px=overlap, preprocess=lambda a: a.astype(np.float32) / 255,
                  batch_size=8, device=device, tta="none")
    timer = _op_timer() if device == "host" else contextlib.nullcontext()
    if device == "host":
        kwargs["device"] = "cpu"
    with timer:  # warm-up: first allocations and, under the timer, torch's first-use imports for dispatch modes
        for _ in predict_strips(predictor, ConstantRaster(side), **kwargs):
            pass
    if device == "host":
        type(timer).seconds, type(timer).cpu_seconds, type(timer).ops = 0.0, 0.0, 0
    with timer:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in predict_strips(predictor, ConstantRaster(side), **kwargs):
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    import segkit
    from segkit.data.windows import grid_windows

    tiles = len(grid_windows(side, side, fov, min(overlap, fov // 2)))
    out = {"tiles": tiles, "wall_ms_per_tile": 1000 * wall / tiles, "cpu_ms_per_tile": 1000 * cpu / tiles,
           "code": str(Path(segkit.__file__).parent)}
    if device == "host":  # the host's share: time outside torch operations (see _op_timer)
        out["wall_ms_per_tile"] = 1000 * (wall - type(timer).seconds) / tiles
        out["cpu_ms_per_tile"] = 1000 * (cpu - type(timer).cpu_seconds) / tiles
        out["ops_per_tile"] = type(timer).ops / tiles
    return out


def _child(code: Path | None, case: str, device: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = str(code) if code else str(ROOT)
    out = subprocess.run([sys.executable, __file__, "--child", case, "--device", device], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_predictor(before: Path | None, cases: list[str], rounds: int, device: str) -> None:
    print(f"predictor, ms per tile (best of {rounds} alternating rounds; batch 8, no TTA, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')})")
    print("  all: the whole predictor on this device; host: its time outside torch operations, the part that\n"
          "  keeps a GPU waiting (resize, blend and strips before; reads, Python and strip copies after)")
    print(f"  {'case':11s} {'':4s} {'tiles':>5s} {'before wall':>11s} {'cpu':>6s} {'after wall':>10s} {'cpu':>6s} "
          f"{'after/before wall':>17s} {'cpu':>5s} {'torch ops/tile':>14s}")
    for case in cases:
        for mode in (device, "host"):
            best = {"before": None, "after": None}
            for _ in range(rounds):
                for side, code in (("before", before), ("after", None)):
                    if side == "before" and before is None:
                        continue
                    result = _child(code, case, mode)
                    if best[side] is None or result["wall_ms_per_tile"] < best[side]["wall_ms_per_tile"]:
                        best[side] = result
            a, b = best["after"], best["before"] or {"wall_ms_per_tile": float("nan"), "cpu_ms_per_tile": float("nan")}
            ops = f"{b.get('ops_per_tile', float('nan')):.1f} -> {a['ops_per_tile']:.1f}" if mode == "host" else ""
            print(f"  {case:11s} {'host' if mode == 'host' else 'all':4s} {a['tiles']:5d} {b['wall_ms_per_tile']:11.2f} "
                  f"{b['cpu_ms_per_tile']:6.2f} {a['wall_ms_per_tile']:10.2f} {a['cpu_ms_per_tile']:6.2f} "
                  f"{a['wall_ms_per_tile'] / b['wall_ms_per_tile']:17.2f} "
                  f"{a['cpu_ms_per_tile'] / b['cpu_ms_per_tile']:5.2f} {ops:>14s}")


def bench_feeding(device: str, workers: list[int], steps: int, windows: int, batch: int) -> None:
    """Training steps/s at 512 px against the training loader's windows/s per worker count."""
    import numpy as np
    import tifffile
    import torch
    import yaml

    from segkit.ground.config import load_config
    from segkit.models.losses import create_loss
    from segkit.train import from_config as fc
    from segkit.train.hardware import loader_for
    from segkit.train.loop import train_one_epoch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for index in range(2):
            image = rng.normal(110, 25, (3072, 3072)).clip(0, 255).astype(np.uint8)
            mask = np.zeros(image.shape, np.uint8)
            for r, c in rng.integers(0, 3072, (400, 2)):
                mask[max(r - 12, 0):r + 12, max(c - 12, 0):c + 12] = 1
            tifffile.imwrite(root / f"img{index}.tif", image, tile=(256, 256), compression="zlib")
            tifffile.imwrite(root / f"mask{index}.tif", mask, tile=(256, 256), compression="zlib")
        (root / "m.csv").write_text("id,image,label,fold\n" + "".join(
            f"i{k},{root / f'img{k}.tif'},{root / f'mask{k}.tif'},{k}\n" for k in range(2)))
        recipe = yaml.safe_load((ROOT / "segkit/configs/augment_baseline.yaml").read_text()) \
            if (ROOT / "segkit/configs/augment_baseline.yaml").exists() else {}
        config = {"run": {"runs_dir": str(root / "runs"), "progress": False},
                  "data": {"manifest": str(root / "m.csv"), "size": 512, "fov_px": 512, "val_fold": 1,
                           "stats_windows": 8, **(recipe.get("data", {}) if isinstance(recipe, dict) else {})},
                  "train": {"batch_size": batch, "windows_per_epoch": max(windows, steps * batch), "amp": True}}
        (root / "c.yaml").write_text(yaml.safe_dump(config))
        cfg = fc.with_fov(load_config(root / "c.yaml"))
        data = fc.training_data(cfg)
        preprocess = fc.preprocess_for(cfg, data, seed=0)
        dataset = fc.train_dataset(cfg, data, preprocess, fc.augment_for(cfg, data, preprocess), rank=0, world=1)
        dataset.set_epoch(1)
        print(f"\nloader at 512 px ({'augment_baseline' if recipe else 'no augmentation'}), {windows} windows, "
              f"batch {batch}")
        per_worker = []
        for count in workers:
            loader = loader_for(torch.utils.data.Subset(dataset, range(windows)), batch, count, torch.device(device))
            started = time.perf_counter()
            batches = iter(loader)
            next(batches)  # the first batch carries the workers' start-up; timed apart
            first = time.perf_counter() - started
            wall, cpu = time.perf_counter(), time.process_time()
            seen = sum(int(b["image"].shape[0]) for b in batches)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rate = seen / wall
            per_worker.append(rate / max(1, count))
            print(f"  workers {count}: {rate:6.1f} windows/s after the first batch ({first:.1f} s)  "
                  f"({wall:.1f} s wall, {cpu:.1f} s CPU in the training process)")
        device_obj = torch.device(device)
        model = fc.build_model(cfg, preprocess.in_channels).to(device_obj)
        loss = create_loss(cfg.train.loss, classes=1).to(device_obj)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        fixed = [next(iter(loader_for(dataset, batch, 0, device_obj)))] * steps
        train_one_epoch(model, fixed[:1], loss, optimizer, device=device_obj, amp=True, progress=False)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        train_one_epoch(model, fixed, loss, optimizer, device=device_obj, amp=True, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        need = steps * batch / wall
        print(f"training Unet-resnet18 at 512 px on {device}: {steps / wall:.2f} steps/s = {need:.1f} windows/s "
              f"({wall:.1f} s wall, {cpu:.1f} s CPU for {steps} steps of {batch})")
        print(f"  one loader worker gives ~{per_worker[-1]:.1f} windows/s: this device needs "
              f"~{need / max(per_worker[-1], 1e-9):.1f} worker(s) to stay fed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=None, help="a folder holding the old segkit package")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["predictor", "feeding"], default=None)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--windows", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_predictor(args.child, args.device)))
        return
    if args.before is not None and not (args.before / "segkit" / "__init__.py").exists():
        sys.exit(f"--before {args.before}: no segkit package in it")
    print(f"load before: {os.getloadavg()[0]:.2f} (1-minute average), {os.cpu_count()} CPUs")
    if args.only in (None, "predictor"):
        bench_predictor(args.before, args.cases.split(","), args.rounds, args.device)
    if args.only in (None, "feeding"):
        bench_feeding(args.device, [int(w) for w in args.workers.split(",")], args.steps, args.windows, args.batch)
    print(f"load after: {os.getloadavg()[0]:.2f}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
