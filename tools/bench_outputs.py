"""What the viewer-ready outputs cost: mask TIFF with overviews vs without, pyramidal OME-TIFF vs
GeoTIFF, GeoJSON in the raster CRS vs RFC 7946 WGS 84 (reprojected), each in its own subprocess.

Every case writes the same synthetic class mask (discs on a grid, rows streamed as 256-row
strips, as `segkit infer` hands them to the writers) and reports CPU seconds (process_time, the
steadier figure on a shared machine), wall seconds, peak RSS of the subprocess and the output
size; ratios are against the first case of each pair, measured side by side in one run.

    python tools/bench_outputs.py                  # 8192 x 8192 mask
    python tools/bench_outputs.py --size 4096
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

CASES = {
    "tiff": "mask GeoTIFF, no overviews",
    "tiff+overviews": "mask GeoTIFF + internal overviews (default)",
    "ome": "mask pyramidal OME-TIFF",
    "geojson-raster": "GeoJSON, raster CRS (default)",
    "geojson-wgs84": "GeoJSON, RFC 7946 WGS 84",
}
PAIRS = [("tiff", "tiff+overviews"), ("tiff+overviews", "ome"), ("geojson-raster", "geojson-wgs84")]


def _strips(size: int, strip: int = 256):
    """Discs of radius 6 every 24 px (class 1) and every 5th disc class 2, strip by strip."""
    yy, xx = np.mgrid[:strip, :size]
    for row0 in range(0, size, strip):
        h = min(strip, size - row0)
        y, x = (yy[:h] + row0) % 24 - 12, xx[:h] % 24 - 12
        mask = ((y * y + x * x) <= 36).astype(np.uint8)
        mask[(mask == 1) & (((yy[:h] + row0) // 24 + xx[:h] // 24) % 5 == 0)] = 2
        yield mask


def _run_case(case: str, size: int, out_dir: Path) -> dict:
    from rasterio.transform import from_origin

    from segkit.io.writers.ome import OmeTiffStripWriter
    from segkit.io.writers.polygons import PolygonStripWriter
    from segkit.io.writers.strips import TiffStripWriter

    geo = {"crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 0.5, 0.5)}
    if case.startswith("tiff"):
        path = out_dir / "m.tif"
        writer = TiffStripWriter(path, size, size, overviews="nearest" if case == "tiff+overviews" else None, **geo)
    elif case == "ome":
        path = out_dir / "m.ome.tif"
        writer = OmeTiffStripWriter(path, size, size, overviews="nearest", **geo)
    else:
        path = out_dir / "p.geojson"
        writer = PolygonStripWriter(path, size, size, geojson_crs=case.split("-")[1], **geo)
    cpu, wall = time.process_time(), time.perf_counter()
    with writer:
        for strip in _strips(size):
            writer.write(strip)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "file_mb": path.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="mask side in pixels")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)  # one case, in a subprocess
    args = parser.parse_args()
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_run_case(args.case, args.size, Path(tmp))))
        return
    print(f"{args.size} x {args.size} mask, load average {os.getloadavg()[0]:.1f} at start")
    results = {}
    for case in CASES:
        done = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--case", case],
                              capture_output=True, text=True, check=True)
        results[case] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[case]
        print(f"{CASES[case]:<45} cpu {r['cpu_s']:7.2f} s  wall {r['wall_s']:7.2f} s  "
              f"peak {r['peak_mb']:6.0f} MB  file {r['file_mb']:7.1f} MB")
    for base, other in PAIRS:
        b, o = results[base], results[other]
        print(f"{CASES[other]} / {CASES[base]}: cpu x{o['cpu_s'] / b['cpu_s']:.2f}, "
              f"peak RSS x{o['peak_mb'] / b['peak_mb']:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
