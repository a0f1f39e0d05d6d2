"""Where `segkit evaluate` reads predictions and truth: any label source segkit reads.

A `--pred` or `--truth` argument is one of
- an RLE CSV (`id,<rle>`): the rows of each image by its id (Kaggle submissions, train.csv);
- a folder: one file per image, matched by stem (`ID.png`, `ID.tif`, `ID_mask.png`, `ID.geojson`),
  e.g. what `segkit infer --mask 'out/{id}.tif'` or `--polygons 'out/{id}.geojson'` writes;
- one mask raster or GeoJSON file, for a single image.
Each image's source is opened through segkit.io.labels.masks.open_labels, so it is read by window
and a slide is never decoded whole. Images come from the manifest (id, image, region) or from
`--images` (ids are file stems).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from segkit.data.manifest import IMAGE_SUFFIXES, LABEL_SUFFIXES, ManifestRow
from segkit.ground.geometry import Window
from segkit.ground.errors import SegkitError
from segkit.io.labels.rle_rows import rle_ids
from segkit.io.labels.masks import _stem, open_labels

# GeoJSON written by `segkit infer --polygons` keeps the class id in this property
PRED_CLASS_PROPERTY = "class"


@dataclass(frozen=True)
class EvalImage:
    """One image to score: its id, file, optional region (row,col,height,width) and label file."""

    id: str
    image: Path
    region: Optional[Window] = None
    label: Optional[str] = None


def images_from_rows(rows: list[ManifestRow]) -> list[EvalImage]:
    return [EvalImage(row.id, Path(row.image), row.region, row.label) for row in rows]


def images_from_paths(paths: list[str]) -> list[EvalImage]:
    """Image files and folders of images -> EvalImages with the file stem as id."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise SegkitError(f"{path}: --images: no such file or folder")
    if not files:
        raise SegkitError(f"--images {' '.join(paths)}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    images, seen = [], {}
    for path in files:
        image_id = _stem(path)
        if image_id in seen:
            raise SegkitError(f"{path}: same id (file stem) as {seen[image_id]}")
        seen[image_id] = path
        images.append(EvalImage(image_id, path))
    return images


class LabelSpec:
    """A --pred or --truth argument resolved per image id (see the module docstring)."""

    def __init__(self, spec, what: str, *, rle_order: str = "F", class_map: dict | None = None,
                 class_property: str | None = None):
        self.path, self.what = Path(spec), what
        self.options = dict(rle_order=rle_order, class_map=class_map, class_property=class_property)
        self.files: dict[str, Path] = {}
        if self.path.is_dir():
            self.kind = "folder"
            for file in sorted(self.path.iterdir()):
                if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in LABEL_SUFFIXES:
                    stem = _stem(file)
                    self.files.setdefault(stem, file)
                    if stem.endswith("_mask"):
                        self.files.setdefault(stem[: -len("_mask")], file)
            if not self.files:
                raise SegkitError(f"{self.path}: {what} folder holds no mask, image or GeoJSON files")
            self._ids = set(self.files)
        elif self.path.is_file():
            self.kind = "csv" if self.path.suffix.lower() == ".csv" else "file"
            self._ids = rle_ids(self.path) if self.kind == "csv" else None
        else:
            raise SegkitError(f"{self.path}: {what} not found")

    def ids(self) -> Optional[set[str]]:
        """The image ids this source has rows/files for (None: one file, for a single image)."""
        return self._ids

    def has(self, image_id: str) -> bool:
        return self._ids is None or image_id in self._ids

    def check_single(self, images: list[EvalImage]) -> None:
        if self.kind == "file" and len(images) != 1:
            raise SegkitError(f"{self.path}: one {self.what} file for {len(images)} images; give an RLE CSV or "
                              "a folder with one file per image id")

    def open(self, image_id: str, raster):
        """The label source of image_id over `raster`, or None when this source has nothing for it."""
        if not self.has(image_id):
            return None
        path = self.files.get(image_id, self.path)
        options = dict(self.options)
        if path.suffix.lower() in (".geojson", ".json") and self.what == "--pred" and options["class_property"] is None:
            options["class_property"] = _pred_class_property(path)
        return open_labels(path, raster, image_id=image_id, **options)


def _pred_class_property(path: Path) -> Optional[str]:
    """segkit's own polygons carry their class in `class`; other files are one foreground class."""
    import json

    try:
        features = json.loads(path.read_text()).get("features") or []
    except (OSError, ValueError, AttributeError):
        return None  # open_labels names the file and the problem
    props = [f.get("properties") or {} for f in features if isinstance(f, dict)]
    return PRED_CLASS_PROPERTY if props and all(PRED_CLASS_PROPERTY in p for p in props) else None


class EmptyLabels:
    """No prediction for an image: reads as background everywhere."""

    def read(self, window: Window, out_size=None) -> np.ndarray:
        h, w = (out_size if out_size is not None else (window.height, window.width))
        return np.zeros((int(h), int(w)), np.uint8)


class OffsetLabels:
    """A label source that covers only a region of the image (e.g. the predicted validation rows)."""

    def __init__(self, source, region: Window):
        self.source, self.region = source, region

    def read(self, window: Window, out_size=None) -> np.ndarray:
        shifted = Window(window.row - self.region.row, window.col - self.region.col, window.height, window.width)
        return self.source.read(shifted, out_size)


class OffsetInstances(OffsetLabels):
    """OffsetLabels of predicted objects: also their ids (``ids``: a raster of the region's object ids)."""

    def __init__(self, source, region: Window, ids):
        super().__init__(source, region)
        self.ids = ids

    def read_instances(self, window: Window) -> np.ndarray:
        shifted = Window(window.row - self.region.row, window.col - self.region.col, window.height, window.width)
        return self.ids.read(shifted)[..., 0].astype(np.int32)
