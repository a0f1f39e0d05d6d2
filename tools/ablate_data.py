"""The datasets of tools/bench_ablate.py, written under its output folder.

Both segmentation datasets carry their labels as GeoJSON polygons in pixel coordinates, one
feature per object: read as a mask (data.targets null) every polygon is foreground, read with
instance targets every polygon is its own object. So the instance-target arm differs from the
base in data.targets alone, and object F1 has exact true objects for every arm.

- nuclei: the bundled Data Science Bowl sample (segkit/sample), its instance raster turned into
  polygons; rows 0-383 train, 384-511 validate (as segkit/sample/manifest.csv).
- scene: tools/make_scene.py's aerial-like scene (seed 0), buildings split into objects by
  4-connected components; the bottom quarter validates.
- digits: tools/make_digits.py, trained on train_noisy.csv (10 % of the labels flipped, where
  label smoothing and class balancing are meant to matter), scored on the clean test split.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile

SAMPLE = Path(__file__).resolve().parents[1] / "segkit" / "sample"


@dataclass(frozen=True)
class Dataset:
    """One dataset of the ablation: its task, manifest, and the object scale the rules use."""

    name: str
    task: str  # seg | cls
    manifest: Path
    bands: int = 3
    diameter_px: float = 0.0  # median equivalent diameter of the training objects (seg)
    area_px: float = 0.0  # median area of the training objects (seg)
    extra: dict = field(default_factory=dict)  # cls: test manifest


def polygons_geojson(ids: np.ndarray) -> dict:
    """GeoJSON FeatureCollection (pixel coordinates, x = column) with one feature per object id."""
    from rasterio import features
    from shapely.geometry import MultiPolygon, mapping, shape

    parts: dict[int, list] = {}
    for geom, value in features.shapes(ids.astype(np.int32), mask=ids > 0, connectivity=4):
        parts.setdefault(int(value), []).append(shape(geom))
    out = []
    for value, polys in sorted(parts.items()):
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        out.append({"type": "Feature", "id": value, "properties": {"object_id": value}, "geometry": mapping(geom)})
    return {"type": "FeatureCollection", "features": out}


def _object_scale(ids: np.ndarray) -> tuple[float, float]:
    areas = np.bincount(ids.ravel())[1:]
    areas = areas[areas > 0]
    area = float(np.median(areas))
    return area, float(np.sqrt(4 * area / np.pi))


def _write_seg(folder: Path, name: str, image: np.ndarray, ids: np.ndarray, val_rows: int) -> Dataset:
    """image.tif + objects.geojson + manifest.csv (the last ``val_rows`` rows validate)."""
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "image.tif", image, photometric="rgb" if image.ndim == 3 else "minisblack")
    (folder / "objects.geojson").write_text(json.dumps(polygons_geojson(ids)))
    height, width = ids.shape
    train = height - val_rows
    (folder / "manifest.csv").write_text(
        "id,image,label,region,fold\n"
        f'{name}_train,image.tif,objects.geojson,"0,0,{train},{width}",1\n'
        f'{name}_val,image.tif,objects.geojson,"{train},0,{val_rows},{width}",0\n')
    area, diameter = _object_scale(ids[:train])
    return Dataset(name, "seg", folder / "manifest.csv", bands=image.shape[2] if image.ndim == 3 else 1,
                   diameter_px=round(diameter, 1), area_px=area)


def nuclei(out: Path, quick: bool = False) -> Dataset:
    """The bundled sample (quick: its left 256 columns)."""
    image = tifffile.imread(SAMPLE / "nuclei.tif")
    ids = tifffile.imread(SAMPLE / "nuclei_instances.tif").astype(np.int32)
    if quick:
        image, ids = image[:, :256], ids[:, :256]
    return _write_seg(out / "nuclei", "nuclei", image, ids, val_rows=128)


def scene(out: Path, quick: bool = False) -> Dataset:
    """tools/make_scene.py's scene (quick: 256 px instead of 768); buildings as 4-connected objects."""
    import make_scene

    size = 256 if quick else make_scene.SIZE
    image, mask = make_scene.make_scene(0, size)
    _, ids = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=4)
    return _write_seg(out / "scene", "scene", image, ids.astype(np.int32), val_rows=size // 4)


def digits(out: Path, quick: bool = False) -> Dataset:
    """tools/make_digits.py (quick: 8 images per class); trains on the noisy manifest, scored on test."""
    import make_digits

    folder = out / "digits"
    if folder.exists():
        shutil.rmtree(folder)
    make_digits.make_digits(folder, per_class=8 if quick else None, noise_rate=0.1, seed=0)
    with open(folder / "test.csv", newline="") as handle:
        tests = len(list(csv.DictReader(handle)))
    return Dataset("digits", "cls", folder / "train_noisy.csv", extra={"test": folder / "test.csv", "tests": tests})


MAKERS = {"nuclei": nuclei, "scene": scene, "digits": digits}
TASKS = {"nuclei": "seg", "scene": "seg", "digits": "cls"}


def prepare(names, out: Path, quick: bool = False) -> dict[str, Dataset]:
    """The named datasets written under ``out`` (KeyError listing the known names)."""
    unknown = [n for n in names if n not in MAKERS]
    if unknown:
        raise KeyError(f"unknown dataset {unknown[0]}; known: {', '.join(MAKERS)}")
    return {name: MAKERS[name](out, quick) for name in names}
