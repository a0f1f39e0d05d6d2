"""segkit's streaming predictor against MONAI and pytorch-toolbelt: wall time and peak RSS.

Same synthetic RGB tiled TIFF (tools/bench_infer.write_tiff), same model, same tile (512), same
overlap (64 px), same batch of tiles per forward, each ending in a thresholded mask RLE-encoded:

- segkit:    predict_strips over the TIFF read tile by tile (gaussian blend, sigma = tile/8),
             strips thresholded and RLE-encoded as they finish (never a full-size array).
- monai:     monai.inferers.sliding_window_inference(mode="gaussian", overlap=64/512,
             sw_batch_size=batch) on the whole image as a float32 tensor (1, 3, H, W) (its output
             takes the input's dtype, so a uint8 input fails), output (1, 1, H, W) float32 in RAM,
             then threshold + RLE of the full mask.
- toolbelt:  pytorch_toolbelt ImageSlicer (step 448, pyramid weight) + TileMerger on CPU, whole
             image as a uint8 array, merged (1, H, W) float32 in RAM, then threshold + RLE.

The peers need the full image (and full-size float accumulators) in memory: they stitch in RAM.
Every measurement runs in its own subprocess; peak RSS is that process's ru_maxrss (the
"idle" column is its RSS after imports and model creation, before any image work). The RLE
string of the output is part of every method's peak; it grows with the image (the "RLE MB"
column; the 1x1 model's mask has many short runs per column, so it is large). Wall time
excludes imports; for the peers it includes decoding the whole TIFF into memory.

Models: "tiny" is a 3x3 conv (3->8) + ReLU + 1x1 conv (8->1); "1x1" is a single 1x1 conv, so time
is dominated by reading, stitching and encoding (what differs between the three).

    python tools/bench_peers.py                                   # 4000^2 tiny + 10000^2 1x1 (~10 min, 2 cores)
    python tools/bench_peers.py --time-size 2000 --rss-size 0     # quick
Needs the bench extra: pip install 'segkit[bench]' (monai, pytorch-toolbelt).
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

TILE, OVERLAP, BATCH = 512, 64, 8
METHODS = ("segkit", "monai", "toolbelt")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _model(kind: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "1x1":  # logit 8 * (R - G): foreground where red beats green (about a third of the image)
        net = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            net.weight.copy_(torch.tensor([8.0, -8.0, 0.0]).view(1, 3, 1, 1))
            net.bias.zero_()
    else:
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
    return net.eval()


def _worker(method: str, image: str, kind: str, threads: int, rle: bool = True) -> dict:
    import numpy as np
    import torch

    from segkit.io.rle import RleStripEncoder, encode

    torch.set_num_threads(threads)
    net = _model(kind)
    if method == "monai":
        from monai.inferers import sliding_window_inference
    elif method == "toolbelt":
        from pytorch_toolbelt.inference.tiles import ImageSlicer, TileMerger
    else:
        from segkit.ground.geometry import Window
        from segkit.infer.predict import predict_strips
        from segkit.io.images.raster import open_raster
    idle = _rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "segkit":
            raster = open_raster(image)
            encoder = RleStripEncoder(raster.height, raster.width) if rle else None
            foreground = 0
            for _, probs in predict_strips(
                [(net, 1.0)], raster, fov_px=TILE, size=TILE, overlap_px=OVERLAP,
                preprocess=lambda x: x.astype(np.float32) * (1 / 255.0), tta="none", blend="gaussian",
                batch_size=BATCH, activation="sigmoid", region=Window(0, 0, raster.height, raster.width),
            ):
                mask = probs[0] >= 0.5
                foreground += int(mask.sum())
                if encoder is not None:
                    encoder.add(mask)
            text = encoder.finish() if encoder is not None else ""
        else:
            import tifffile

            img = tifffile.imread(image)  # (H, W, 3) uint8: the whole image in RAM
            if method == "monai":
                # MONAI's output takes the input's dtype: the input must be float (a full-size float copy)
                x = torch.from_numpy(img).permute(2, 0, 1)[None].float().mul_(1 / 255.0)
                del img
                out = sliding_window_inference(
                    x, (TILE, TILE), BATCH, lambda t: torch.sigmoid(net(t)),
                    overlap=OVERLAP / TILE, mode="gaussian", sigma_scale=0.125, progress=False,
                )
                mask = out[0, 0].numpy() >= 0.5
            else:
                slicer = ImageSlicer(img.shape[:2], tile_size=TILE, tile_step=TILE - OVERLAP, weight="pyramid")
                merger = TileMerger(slicer.target_shape, 1, slicer.weight)
                tiles, coords = [], []

                def flush():
                    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() * (1 / 255.0)
                    merger.integrate_batch(torch.sigmoid(net(x)), coords)
                    tiles.clear()
                    coords.clear()

                for tile, crop in slicer.iter_split(img):
                    tiles.append(tile)
                    coords.append(crop)
                    if len(tiles) == BATCH:
                        flush()
                if tiles:
                    flush()
                merged = merger.merge_()[0].numpy()
                mask = slicer.crop_to_orignal_size(merged) >= 0.5
            foreground = int(mask.sum())
            text = encode(mask) if rle else ""
    wall = time.perf_counter() - start
    return {"method": method, "wall_s": wall, "rss_mb": _rss_mb(), "idle_mb": idle, "foreground": foreground,
            "rle_chars": len(text)}


def _measure(method: str, image: Path, kind: str, threads: int, rle: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--image", str(image), "--model", kind,
           "--threads", str(threads)] + ([] if rle else ["--no-rle"])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(title: str, rows: list[dict]) -> str:
    base = next((r for r in rows if r["method"] == "segkit" and "error" not in r), None)
    lines = [title, f"{'method':<10} {'wall s':>8} {'peak RSS MB':>12} {'idle MB':>8} {'fg px':>12} "
                    f"{'RLE MB':>7} {'time ratio':>11} {'RSS ratio':>10}  (ratios: peer / segkit)"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<10} error: {r['error']}")
            continue
        t = r["wall_s"] / base["wall_s"] if base else float("nan")
        m = r["rss_mb"] / base["rss_mb"] if base else float("nan")
        lines.append(f"{r['method']:<10} {r['wall_s']:>8.2f} {r['rss_mb']:>12.0f} {r['idle_mb']:>8.0f} "
                     f"{r['foreground']:>12d} {r['rle_chars'] / 1e6:>7.0f} {t:>11.2f} {m:>10.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-size", type=int, default=4000, help="side of the timing image (tiny model); 0 skips")
    parser.add_argument("--rss-size", type=int, default=10000, help="side of the memory image (1x1 model); 0 skips")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-rle", action="store_true",
                        help="threshold and count only: peak RSS without the output's RLE string")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", choices=("tiny", "1x1"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.image, args.model, args.threads, rle=not args.no_rle)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_infer import write_tiff

    methods = args.methods.split(",")
    print(f"tile {TILE}, overlap {OVERLAP}, {BATCH} tiles per forward, {args.threads} threads, CPU; "
          "monai and toolbelt hold the whole image and full-size float accumulators in RAM, "
          "segkit reads tiles and holds one strip", flush=True)
    with tempfile.TemporaryDirectory(prefix="segkit-bench-peers-") as tmp:
        for size, kind in ((args.time_size, "tiny"), (args.rss_size, "1x1")):
            if size <= 0:
                continue
            image = Path(tmp) / f"synthetic_{size}.tif"
            t = time.perf_counter()
            write_tiff(image, size, size)
            print(f"\nwrote {size}x{size} RGB tiled TIFF ({image.stat().st_size / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - t:.0f} s", flush=True)
            rows = [_measure(method, image, kind, args.threads, rle=not args.no_rle) for method in methods]
            print(_table(f"{size}x{size}, model {kind}", rows), flush=True)
            image.unlink()


if __name__ == "__main__":
    main()
