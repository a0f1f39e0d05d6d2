"""Random-window sampling speed and memory: segkit's window readers vs decoding the whole image.

    python tools/bench_sampling.py                      # 20000 and 10000 px images in a temp dir
    python tools/bench_sampling.py --workdir /tmp/bench --sizes 20000 --seconds 10

Writes (once per --workdir) an RGB uint8 tiled, deflate-compressed BigTIFF of each size, written
tile by tile so the writer never holds the image, with a label of round "glomeruli" as an RLE CSV
(column-major, Kaggle HuBMAP style) and as GeoJSON polygons. Then, each in its own subprocess so
peak RSS figures are separate, reads image + label at random windows (fov --fov px resized to
--size) for --seconds, and does the naive thing (decode the whole image and the whole mask, crop)
for --naive-windows windows. Prints one table with windows/s, peak RSS and the speed-up.
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


def _tile_pool(tile: int, n: int = 16) -> list[np.ndarray]:
    """A few textured tissue tiles (smooth stain-like colour fields + noise) reused across the image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
    pool = []
    for k in range(n):
        fy, fx, ph = rng.uniform(10, 60), rng.uniform(10, 60), rng.uniform(0, 6)
        base = np.sin(yy / fy + ph) * np.cos(xx / fx - ph)
        noise = rng.normal(0, 6, (tile, tile)).astype(np.float32)
        rgb = np.stack([200 + 35 * base + noise, 120 + 50 * base + noise, 190 + 25 * base + noise], -1)
        pool.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return pool


def _objects(size: int, seed: int = 1) -> np.ndarray:
    """(n, 3) centre row, centre col, radius of the labelled objects, ~one per 500x500 px."""
    rng = np.random.default_rng(seed)
    n = max(1, (size // 500) ** 2)
    return np.stack([rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(40, 160, n)], -1)


def _write_image(path: Path, size: int, tile: int, pyramid: bool) -> None:
    """Tiled deflate BigTIFF written tile by tile (plus a half-size SubIFD level if pyramid)."""
    import tifffile

    pool = _tile_pool(tile)
    background = np.full((tile, tile, 3), 242, np.uint8)

    def tiles(n):
        for r in range(0, n, tile):
            for c in range(0, n, tile):
                # tissue is a big ellipse; outside it near-white glass, as on a slide
                dy, dx = (r + tile / 2) / n - 0.5, (c + tile / 2) / n - 0.5
                yield pool[(r // tile * 7 + c // tile * 13) % len(pool)] if dy * dy + dx * dx < 0.2 else background

    opts = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="zlib",
                compressionargs={"level": 1})
    tmp = path.with_suffix(".tmp.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(tiles(size), shape=(size, size, 3), subifds=1 if pyramid else 0, **opts)
        if pyramid:
            half = (size + 1) // 2
            tw.write(tiles(half), shape=(half, half, 3), subfiletype=1, **opts)
    os.replace(tmp, path)


def make_data(workdir: Path, size: int, tile: int, pyramid: bool = False) -> dict:
    import cv2

    from segkit.io.rle import RleStripEncoder

    image = workdir / f"slide{size}_tile{tile}.tif"
    pyr = workdir / f"slide{size}_tile{tile}_pyramid.tif"
    csv_path, geojson = workdir / f"labels{size}.csv", workdir / f"slide{size}.geojson"
    if not image.exists():
        _write_image(image, size, tile, pyramid=False)
    if pyramid and not pyr.exists():
        _write_image(pyr, size, tile, pyramid=True)
    if not (csv_path.exists() and geojson.exists()):
        objects = _objects(size)
        encoder, strip = RleStripEncoder(size, size, order="F"), 1024
        for r0 in range(0, size, strip):
            h = min(strip, size - r0)
            mask = np.zeros((h, size), np.uint8)
            near = (objects[:, 0] + objects[:, 2] >= r0) & (objects[:, 0] - objects[:, 2] < r0 + h)
            for cy, cx, rad in objects[near]:
                cv2.circle(mask, (int(cx), int(cy) - r0), int(rad), 1, -1)
            encoder.add(mask)
        csv_path.write_text(f"id,encoding\nslide{size},{encoder.finish()}\n")
        feats = [{"type": "Feature", "properties": {},
                  "geometry": {"type": "Polygon", "coordinates": [cv2.ellipse2Poly(
                      (int(cx), int(cy)), (int(rad), int(rad)), 0, 0, 360, 5).tolist()]}}
                 for cy, cx, rad in objects]
        for f in feats:
            f["geometry"]["coordinates"][0].append(f["geometry"]["coordinates"][0][0])
        geojson.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return {"image": str(image), "pyramid": str(pyr), "rle": str(csv_path), "polygon": str(geojson),
            "id": f"slide{size}"}


def _peak_rss_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec, so a
    child would report its parent's peak (here: the data generation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB, macOS: bytes


def measure(mode: str, image: str, label: str, image_id: str, fov: int, size: int, seconds: float,
            windows: int) -> dict:
    """Runs in a child process; returns figures as a dict."""
    import cv2
    import tifffile

    from segkit.ground.geometry import Window
    from segkit.io.labels.masks import open_labels
    from segkit.io.images.raster import open_raster
    from segkit.io.rle import decode

    rng = np.random.default_rng(0)
    base_rss = _peak_rss_mb()  # interpreter + numpy + cv2 + tifffile + rasterio + segkit
    if mode == "naive":
        rle_text = Path(label).read_text().splitlines()[1].split(",", 1)[1]
        t0, cpu0, n = time.perf_counter(), time.process_time(), 0
        while n < windows:
            whole = tifffile.imread(image)  # what a reader without window access does per window
            h, w = whole.shape[:2]
            mask = decode(rle_text, (h, w))
            r, c = (int(v) for v in rng.integers(0, h - fov, 2))
            cv2.resize(whole[r:r + fov, c:c + fov], (size, size), interpolation=cv2.INTER_AREA)
            cv2.resize(mask[r:r + fov, c:c + fov], (size, size), interpolation=cv2.INTER_NEAREST)
            del whole, mask
            n += 1
        elapsed = time.perf_counter() - t0
        return {"windows": n, "seconds": elapsed, "wps": n / elapsed, "open_s": 0.0,
                "w_per_cpu_s": n / (time.process_time() - cpu0),
                "peak_rss_mb": _peak_rss_mb(), "import_rss_mb": base_rss}
    t0 = time.perf_counter()
    raster = open_raster(image)
    labels = open_labels(label, raster, image_id=image_id)
    if mode == "zarr":  # the same windows through tifffile's zarr store (what segkit's fast path replaces)
        import zarr

        level0 = zarr.open(tifffile.imread(image, aszarr=True), mode="r")
        read_image = lambda win: cv2.resize(np.asarray(level0[win.row:win.bottom, win.col:win.right]),  # noqa: E731
                                            (size, size), interpolation=cv2.INTER_AREA)
    else:
        read_image = lambda win: raster.read(win, out_size=(size, size))  # noqa: E731
    open_s = time.perf_counter() - t0
    h, w = raster.height, raster.width
    n, fg, t_img, t_mask = 0, 0, 0.0, 0.0
    t0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds and n < windows:
        r, c = (int(v) for v in rng.integers(0, max(1, h - fov), 2))
        win = Window(r, c, fov, fov)
        t1 = time.perf_counter()
        img = read_image(win)
        t2 = time.perf_counter()
        mask = labels.read(win, out_size=(size, size))
        t_img, t_mask = t_img + t2 - t1, t_mask + time.perf_counter() - t2
        assert img.shape == (size, size, 3) and mask.shape == (size, size)
        fg += int(mask.any())
        n += 1
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"windows": n, "seconds": elapsed, "wps": n / elapsed, "w_per_cpu_s": n / cpu, "open_s": open_s,
            "fg_windows": fg, "ms_image": t_img / n * 1e3, "ms_label": t_mask / n * 1e3,
            "peak_rss_mb": _peak_rss_mb(), "import_rss_mb": base_rss}


def _child(args, mode, data, image_key, label_key, windows) -> dict:
    cmd = [sys.executable, __file__, "--_measure", mode, "--_image", data[image_key], "--_label", data[label_key],
           "--_id", data["id"],
           "--fov", str(args.fov), "--size", str(args.size), "--seconds", str(args.seconds),
           "--_windows", str(windows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workdir", type=Path, help="where the test images are written/reused (default: temp dir)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 10000], help="square image sizes in px")
    parser.add_argument("--tile", type=int, default=256, help="TIFF tile size")
    parser.add_argument("--fov", type=int, default=512, help="window field of view in source px")
    parser.add_argument("--size", type=int, default=256, help="network input size the window is resized to")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per segkit measurement")
    parser.add_argument("--labels", nargs="+", default=["rle", "polygon"], choices=["rle", "polygon"])
    parser.add_argument("--naive-windows", type=int, default=1, help="windows for the naive reader (0 skips it)")
    parser.add_argument("--pyramid", action="store_true",
                        help="also measure a copy with a half-size level (fov 512 -> 256 reads that level)")
    parser.add_argument("--no-zarr", dest="zarr", action="store_false",
                        help="skip the row reading the image through tifffile's zarr store")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_image", help=argparse.SUPPRESS)
    parser.add_argument("--_label", help=argparse.SUPPRESS)
    parser.add_argument("--_id", help=argparse.SUPPRESS)
    parser.add_argument("--_windows", type=int, default=10**9, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._measure:
        print(json.dumps(measure(args._measure, args._image, args._label, args._id, args.fov, args.size,
                                 args.seconds, args._windows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for size in args.sizes:
            t0 = time.perf_counter()
            data = make_data(workdir, size, args.tile, pyramid=args.pyramid)
            mb = Path(data["image"]).stat().st_size / 2**20
            print(f"# {size}x{size}x3 tile {args.tile} deflate BigTIFF: {mb:.0f} MB on disk, "
                  f"ready in {time.perf_counter() - t0:.1f} s", flush=True)
            runs = [("segkit", "image", kind, f"segkit window reads + {kind}") for kind in args.labels]
            if args.pyramid:
                runs += [("segkit", "pyramid", kind, f"segkit + {kind}, pyramid level 1") for kind in args.labels[:1]]
            if args.zarr:
                runs += [("zarr", "image", kind, f"zarr store (aszarr) + {kind}") for kind in args.labels[:1]]
            for mode, image_key, kind, name in runs:
                res = _child(args, mode, data, image_key, kind, 10**9)
                rows.append((size, name, res))
                print(f"  {name}: {res['wps']:.1f} windows/s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
            if args.naive_windows:
                res = _child(args, "naive", data, "image", "rle", args.naive_windows)
                rows.append((size, "naive: decode whole image + RLE, crop", res))
                print(f"  naive: {res['wps']:.3f} windows/s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
        _table(rows, args)


def _num(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _table(rows, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nfov {args.fov} -> size {args.size}, random windows, one process, image + label per window "
          f"({os.cpu_count()} CPUs, load average {load:.1f})")
    head = (f"{'image':>11} | {'reader':<38} | {'windows/s':>9} | {'per CPU-s':>9} | {'ms img+lbl':>10} | "
            f"{'open s':>6} | {'peak RSS MB':>11} | {'speed-up':>8}")
    print(head)
    print("-" * len(head))
    naive = {size: res["wps"] for size, name, res in rows if name.startswith("naive")}
    for size, name, res in rows:
        ratio = f"{res['wps'] / naive[size]:.0f}x" if size in naive and not name.startswith("naive") else ""
        parts = f"{res['ms_image']:.1f}+{res['ms_label']:.1f}" if "ms_image" in res else ""
        rate, cpu_rate = _num(res["wps"]), _num(res["w_per_cpu_s"])
        print(f"{size:>5}x{size:<5} | {name:<38} | {rate:>9} | {cpu_rate:>9} | {parts:>10} | "
              f"{res['open_s']:>6.2f} | {res['peak_rss_mb']:>11.0f} | {ratio:>8}")
    ours = [(size, name, res) for size, name, res in rows if name.startswith("segkit window")]
    if ours:
        print("goal (issue 3): >= 150 windows/s per worker, peak RSS < 600 MB, the same RSS on a smaller image; "
              "measured: " + "; ".join(f"{size} {name.split('+ ')[-1]}: {_num(res['wps'])}/s wall, "
                                       f"{_num(res['w_per_cpu_s'])}/CPU-s, {res['peak_rss_mb']:.0f} MB"
                                       for size, name, res in ours))
    print(f"(peak RSS includes ~{rows[0][2]['import_rss_mb']:.0f} MB after imports: python, numpy, cv2, tifffile; "
          "per CPU-s = windows per second of this process's CPU time, what a worker with a core to itself gets)")


if __name__ == "__main__":
    main()
