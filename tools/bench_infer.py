"""Benchmark the streaming predictor against a bare model forward, and its peak memory.

1. overhead = wall(predict_strips over a synthetic tiled TIFF, one model, no TTA, strips consumed
   by thresholding + RLE encoding) / wall(bare model forward over the same number of tiles held in
   memory). Both use channels_last + bf16 autocast (what the predictor runs); the bare forward is
   also timed in the other layouts, and the ratio against the fastest is printed too.
2. peak RSS (ru_maxrss of a fresh subprocess) of the same pipeline on bigger synthetic TIFFs:
   the predictor holds only one strip of tiles, so the peak should not grow with the image.

    python tools/bench_infer.py                       # 1024x1280 timing image + 10000^2 vs 20000^2 RSS
    python tools/bench_infer.py --rss-sizes 0         # timing only
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from segkit.infer.ensemble import EnsemblePredictor  # noqa: E402
from segkit.data.windows import grid_windows  # noqa: E402
from segkit.infer.predict import predict_strips  # noqa: E402
from segkit.io.rle import RleStripEncoder  # noqa: E402

# seconds spent inside the model call by the predictor: the rest of its wall time is its own
# work (waiting for reads, resizing, blending, RLE); this split barely depends on the machine's
# load, unlike the ratio of two separate wall times
_MODEL_SECONDS = [0.0]


class TimedPredictor(EnsemblePredictor):
    """The default predictor, timing its model calls (predict_strips takes any predictor)."""

    def __call__(self, x):
        t = time.perf_counter()
        try:
            return super().__call__(x)
        finally:
            _MODEL_SECONDS[0] += time.perf_counter() - t


def write_tiff(path: Path, height: int, width: int, tile: int = 256) -> None:
    """Synthetic RGB tiled TIFF (zlib), generated tile by tile so even huge ones cost little RAM."""
    def tiles():
        yy, xx = np.mgrid[0:tile, 0:tile]
        for r in range(0, height, tile):
            for c in range(0, width, tile):
                y, x = yy + r, xx + c
                blobs = ((np.sin(y / 37.0) * np.cos(x / 53.0)) > 0.3) * 120
                grad = (x * 7 + y * 3) % 97
                t = np.stack([blobs + grad, 200 - grad, blobs // 2 + 40], axis=-1)
                yield t.astype(np.uint8)
    tifffile.imwrite(path, tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib", photometric="rgb")


class _TiffRaster:
    """Fallback reader (tifffile + zarr) with the Raster API, used only if segkit.io.images.raster is absent."""

    def __init__(self, path):
        import zarr
        self.path = Path(path)
        self._arr = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        self.height, self.width, self.channels = self._arr.shape
        self.dtype = self._arr.dtype

    def read(self, window, out_size=None):
        import cv2
        out = np.zeros((window.height, window.width, self.channels), self.dtype)
        r0, c0 = max(window.row, 0), max(window.col, 0)
        r1, c1 = min(window.bottom, self.height), min(window.right, self.width)
        if r1 > r0 and c1 > c0:
            out[r0 - window.row:r1 - window.row, c0 - window.col:c1 - window.col] = self._arr[r0:r1, c0:c1]
        if out_size is not None and tuple(out_size) != out.shape[:2]:
            out = cv2.resize(out, (out_size[1], out_size[0]), interpolation=cv2.INTER_AREA)
        return out


def open_image(path):
    try:
        from segkit.io.images.raster import open_raster
    except ImportError:
        return _TiffRaster(path), "bench fallback (tifffile+zarr)"
    return open_raster(path), "segkit.io.images.raster.open_raster"


def preprocess(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float32) * (1 / 255.0)


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "tiny":
        # predictor cost only: a fixed 1x1 conv that finds the blobs of the blue channel (a realistic
        # mask: ~1 run per object per column), so the RLE part is deterministic too
        conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([0.0, 0.0, 20.0]).reshape(1, 3, 1, 1))
            conv.bias.fill_(-20.0 * 70 / 255)
        return conv.eval()
    arch, encoder = kind.split(":")
    from segkit.models.factory import create_model
    return create_model(arch, encoder, None, in_channels=3, classes=1).eval()


def run_predictor(model, raster, args, amp=True, rle=True) -> tuple[float, int]:
    """Wall time of the streaming path (predict -> threshold -> RLE string) and the number of runs
    (rle=False: foreground pixels counted instead, the predictor alone)."""
    enc = RleStripEncoder(raster.height, raster.width) if rle else None
    count = 0
    t = time.perf_counter()
    predictor = TimedPredictor([(model, 1.0)], "none", amp=amp)
    for _, strip in predict_strips(predictor, raster, fov_px=args.fov, size=args.size,
                                   overlap_px=args.overlap, preprocess=preprocess, blend="gaussian",
                                   batch_size=args.batch, progress=False):
        if enc is not None:
            enc.add(strip[0] > 0.5)
        else:
            count += int((strip[0] > 0.5).sum())
    if enc is not None:
        rle = enc.finish()
        count = (rle.count(" ") + 1) // 2 if rle else 0
    return time.perf_counter() - t, count


def bare_forward(model, batches, channels_last: bool, amp: bool) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    xs = [b.contiguous(memory_format=fmt) for b in batches]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        model(xs[0][:1])  # warm-up
        t = time.perf_counter()
        for x in xs:
            torch.sigmoid(model(x).float())
        return time.perf_counter() - t


def timing(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "bench.tif"
        write_tiff(path, args.height, args.width)
        raster, reader = open_image(path)
        model = make_model(args.model)
        windows = grid_windows(raster.height, raster.width, args.fov, args.overlap)
        n = len(windows)
        t = time.perf_counter()
        out_size = None if args.size == args.fov else (args.size, args.size)
        tiles = [preprocess(raster.read(w, out_size=out_size)) for w in windows]
        t_read = time.perf_counter() - t
        arr = torch.from_numpy(np.stack(tiles).transpose(0, 3, 1, 2).copy())
        batches = [arr[i:i + args.batch] for i in range(0, n, args.batch)]
        print(f"image {args.height}x{args.width} (reader: {reader}), model {args.model}, fov {args.fov}, "
              f"size {args.size}, overlap {args.overlap}, batch {args.batch}: {n} tiles, "
              f"torch threads {torch.get_num_threads()}")
        print(f"sequential read+preprocess of all tiles: {t_read:.2f} s ({t_read / n * 1000:.1f} ms/tile)")
        layouts = {}
        for cl in (True, False):
            for amp in (True, False):
                if args.all_layouts and not (cl and amp):
                    layouts[(cl, amp)] = min(bare_forward(model, batches, cl, amp) for _ in range(args.repeats))
        # the predictor and its bare counterpart alternate, so a change of machine load (other jobs
        # on a shared box) hits both sides of each pair; the median of the pair ratios is reported
        bare, pred, inside = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_forward(model, batches, True, True))
            _MODEL_SECONDS[0] = 0.0
            pred.append(run_predictor(model, raster, args)[0])
            inside.append(_MODEL_SECONDS[0])
        layouts[(True, True)] = min(bare)
        for (cl, amp), s in sorted(layouts.items(), reverse=True):
            print(f"bare forward  channels_last={cl!s:5} bf16={amp!s:5}: {s:8.2f} s  ({s / n * 1000:7.1f} ms/tile)")
        p = min(pred)
        print(f"predict_strips + threshold + RLE (channels_last, bf16): {p:8.2f} s  ({p / n * 1000:7.1f} ms/tile)")
        print(f"pairs (bare, predictor) s: {', '.join(f'({b:.2f}, {q:.2f})' for b, q in zip(bare, pred))}")
        own = sorted((q - m) / q for q, m in zip(pred, inside))
        print(f"predictor wall outside the model call (reads waited for, resize, blend, RLE): median "
              f"{own[len(own) // 2] * 100:.1f}% (runs: {', '.join(f'{q - m:.2f} s' for q, m in zip(pred, inside))})")
        ratios = sorted(q / b for b, q in zip(bare, pred))
        print(f"overhead vs bare forward (same layout, channels_last+bf16): median of pairs "
              f"{ratios[len(ratios) // 2]:.3f}, min/min {p / min(bare):.3f}")
        best_key = min(layouts, key=layouts.get)
        print(f"overhead vs fastest bare layout (channels_last={best_key[0]}, bf16={best_key[1]}): "
              f"{p / layouts[best_key]:.3f}")


def rss_child(args) -> None:
    """Run the pipeline on an existing TIFF, print JSON with peak RSS (MB) and wall time."""
    raster, _ = open_image(args.rss_child)
    model = make_model(args.rss_model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, count = run_predictor(model, raster, args, amp=args.rss_model != "tiny", rle=args.rss_sink == "rle")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(grid_windows(raster.height, raster.width, args.fov, args.overlap))
    print(json.dumps({"peak_mb": peak, "before_mb": before, "seconds": t, "tiles": n, "count": count}))


def rss(args) -> None:
    sizes = [int(s) for s in args.rss_sizes.split(",") if int(s) > 0]
    if not sizes:
        return
    sinks = ["count", "rle"] if args.rss_sink == "both" else [args.rss_sink]
    rows: dict[str, list] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for side in sizes:
            path = Path(tmp) / f"rss_{side}.tif"
            t = time.perf_counter()
            write_tiff(path, side, side)
            made = time.perf_counter() - t
            print(f"{side}x{side} RGB uint8: tiff written in {made:.0f} s, {path.stat().st_size / 2**20:.0f} MB",
                  flush=True)
            for sink in sinks:
                cmd = [sys.executable, __file__, "--rss-child", str(path), "--rss-model", args.rss_model,
                       "--fov", str(args.rss_fov), "--size", str(args.rss_fov), "--overlap", str(args.overlap),
                       "--batch", str(args.batch), "--rss-sink", sink]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                res = json.loads(out)
                rows.setdefault(sink, []).append((side, res))
                what = "RLE runs" if sink == "rle" else "foreground px"
                print(f"  {sink:5}: {res['tiles']} tiles of {args.rss_fov}, {res['seconds']:.1f} s, "
                      f"peak RSS {res['peak_mb']:.0f} MB (after imports and model: {res['before_mb']:.0f} MB), "
                      f"{what} {res['count']}", flush=True)
            path.unlink()
    for sink, got in rows.items():
        if len(got) > 1:
            print(f"peak RSS ratio {got[-1][0]}^2 / {got[0][0]}^2 ({sink}): "
                  f"{got[-1][1]['peak_mb'] / got[0][1]['peak_mb']:.3f} "
                  f"(model {args.rss_model}, {got[-1][0] ** 2 / got[0][0] ** 2:.0f}x the pixels)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=1024, help="timing image height (px)")
    ap.add_argument("--width", type=int, default=1280, help="timing image width (px)")
    ap.add_argument("--fov", type=int, default=256, help="tile field of view in source px")
    ap.add_argument("--size", type=int, default=256, help="model input size (px)")
    ap.add_argument("--overlap", type=int, default=32, help="tile overlap in source px")
    ap.add_argument("--batch", type=int, default=8, help="tiles per batch")
    ap.add_argument("--model", default="Unet:resnet18", help="ARCH:ENCODER (smp, random weights) or 'tiny'")
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed runs of each side")
    ap.add_argument("--all-layouts", action="store_true",
                    help="also time the bare forward in contiguous and/or float32 layouts")
    ap.add_argument("--rss-sizes", default="10000,20000", help="comma-separated square sides for peak RSS; 0 = skip")
    ap.add_argument("--rss-fov", type=int, default=512, help="tile size for the RSS runs")
    ap.add_argument("--rss-model", default="tiny", help="model for the RSS runs: tiny or ARCH:ENCODER")
    ap.add_argument("--rss-sink", default="both", choices=["count", "rle", "both"],
                    help="what consumes the strips in the RSS runs: count foreground (predictor alone), "
                         "RLE-encode (memory ~ number of runs), or both in separate processes")
    ap.add_argument("--skip-timing", action="store_true", help="only the RSS part")
    ap.add_argument("--tmp", default=None, help="folder for the synthetic TIFFs (default: system temp)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return rss_child(args)
    if not args.skip_timing:
        timing(args)
    rss(args)


if __name__ == "__main__":
    main()
