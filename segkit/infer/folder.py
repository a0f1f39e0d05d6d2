"""`segkit infer` over many images in one process: flat memory, small images batched, resumable.

Images are taken in input order. A run of consecutive images that each fit in one tile goes
through segkit.infer.small (many images per forward pass); any other image through the tiled
predictor. Every image's outputs are finished before the next one is read: its RLE rows are
written to the CSV's temporary file at once (nothing accumulates in memory), its per-image files
are committed as the invocation commits them.

``--resume`` (Outputs.resume): per-image files are committed as soon as each image is done, and
RLE rows are appended to a journal next to the CSV (``.NAME.partial``, one JSON line per image,
flushed per image). A rerun with ``--resume`` skips every image whose outputs are all there (its
journal line, its files), then writes the CSV atomically from the journal and removes the
journal. A line torn by a kill is dropped and its image predicted again.
"""

from __future__ import annotations

import contextlib
import json
import sys
from itertools import groupby
from pathlib import Path
import numpy as np

from segkit.data.dataset import LabelOptions
from segkit.data.headers import read_headers
from segkit.data.manifest import IMAGE_SUFFIXES, ManifestRow
from segkit.data.table import RowTable
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.small import predict_small
from segkit.io.atomic import immediate_commits
from segkit.io.images.raster import open_raster
from segkit.io.writers.strips import RleStripWriter
from segkit.models.activation import output_activation
from segkit.runs.progress import Progress


def expand_images(paths: list[Path]) -> list[Path]:
    """Image paths, with a folder standing for its image files (sorted, hidden files left out):
    100,000 images need no 100,000 command-line arguments."""
    out = []
    for path in paths:
        if Path(path).is_dir():
            out += sorted(p for p in Path(path).iterdir()
                          if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(Path(path))
    return out


def journal_path(rle: Path) -> Path:
    return rle.parent / f".{rle.name}.partial"


class RleJournal:
    """The RLE rows of finished images, one JSON line ``[id, [rle, ...]]`` each, appended and flushed."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.done: set[str] = set()
        good = 0
        if resume and path.exists():
            with open(path, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # torn by a kill: that image is predicted again
                    try:
                        self.done.add(json.loads(line)[0])
                    except (ValueError, IndexError, TypeError):
                        break
                    good += len(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "r+b" if resume and path.exists() else "wb")
        self._fh.truncate(good)
        self._fh.seek(good)

    def add(self, image_id: str, rles: list[str]) -> None:
        self._fh.write((json.dumps([image_id, rles]) + "\n").encode())
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def rows(self):
        """(id, rle) rows in the order images finished; an image predicted again (its files had gone)
        keeps its last line only."""
        last = {}
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle):
                last[json.loads(line)[0]] = number
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle):
                image_id, rles = json.loads(line)
                if last[image_id] == number:
                    yield from ((image_id, text) for text in rles)


def _as_rows(rle) -> list[str]:
    """An image's RLE cells: one, or one per object (infer.rle_per_object; no object: one empty row)."""
    return (rle or [""]) if isinstance(rle, list) else [rle]


def image_sizes(images: list[tuple[str, Path]], progress: bool = True) -> RowTable:
    """Every image's header (cached like the training rows', segkit.data.headers): sizes and bands."""
    table = RowTable([ManifestRow(id=image_id, image=path) for image_id, path in images])
    table.channels = read_headers(table, LabelOptions(), progress=lambda total: Progress(
        total, desc="reading image headers", unit="files", enabled=progress))["channels"]
    return table


def check_bands(table: RowTable, preprocess) -> None:
    """check_channels over the header columns: the first image with other bands is named."""
    from segkit.data.preprocess import Preprocess

    if not isinstance(preprocess, Preprocess):
        return
    bands = max(spec.band for spec in preprocess.channels) + 1
    wrong = np.flatnonzero(table.channels != bands)
    if wrong.size:
        raise SegkitError(f"{table.image[int(wrong[0])]}: has {int(table.channels[wrong[0]])} channel(s) but the "
                          f"run's channel spec reads {bands}")


def infer_one_process(ensemble, images: list[tuple[str, Path]], outputs, settings, device) -> list[Path]:
    """infer_images outside torchrun: every header checked (cached) before any prediction, then infer_stream."""
    from segkit.infer.outputs import check_georeferenced

    table = image_sizes(images, settings.progress)
    check_bands(table, ensemble.preprocess)
    if outputs.polygons and settings.writing.geojson_crs == "wgs84":
        for _, path in images:
            check_georeferenced(open_raster(path), settings.writing)
    return infer_stream(ensemble, images, outputs, settings, device, table)


def infer_stream(ensemble, images: list[tuple[str, Path]], outputs, settings, device, table: RowTable) -> list[Path]:
    """infer_images in one process (see the module docstring); returns the files written."""
    from segkit.infer import run

    kinds = [kind for kind in ("polygons", "mask", "probs", "instances") if getattr(outputs, kind)]
    journal = RleJournal(journal_path(outputs.rle), outputs.resume) if outputs.rle and outputs.resume else None

    def complete(image_id: str) -> bool:
        files = all(outputs.per_image(getattr(outputs, k), image_id, len(images)).exists() for k in kinds)
        return files and (journal is None or image_id in journal.done)

    todo = [i for i, (image_id, _) in enumerate(images) if not (outputs.resume and complete(image_id))]
    batchable = (not ensemble.targets and settings.cls_gate is None and settings.tissue is None
                 and settings.margin_px == 0)
    small = np.zeros(len(images), bool)
    if batchable:
        small = (table.height <= ensemble.fov_px) & (table.width <= ensemble.fov_px)
    one = settings if len(images) == 1 else _quiet(settings)
    written = []
    with contextlib.ExitStack() as stack:
        if outputs.resume:
            stack.enter_context(immediate_commits())  # each image's files stay when a later one is killed
        writer = None
        if outputs.rle is not None:
            writer = stack.enter_context(RleStripWriter(outputs.rle, header=settings.writing.rle_header,
                                                        overwrite=outputs.overwrite, empty=settings.writing.rle_empty))
        bar = stack.enter_context(Progress(len(todo), desc="infer", unit="images",
                                           enabled=settings.progress and len(images) > 1))
        if len(todo) < len(images):
            print(f"resuming: {len(images) - len(todo)} of {len(images)} image(s) already written", file=sys.stderr)

        def finish(image_id: str, rle, paths: list[Path]) -> None:
            if journal is not None:
                journal.add(image_id, _as_rows(rle))
            elif writer is not None:
                for text in _as_rows(rle):
                    writer.write_row(image_id, text)
            written.extend(paths)
            bar.update(1)

        for is_small, group in groupby(todo, key=lambda i: bool(small[i])):
            if is_small:
                _small_images(ensemble, [images[i] for i in group], table, outputs, one, device, len(images), finish)
                continue
            for i in group:
                image_id, path = images[i]
                finish(image_id, *run._infer_one(ensemble, image_id, path, len(images), outputs, one, device))
        if journal is not None:
            journal.close()
            if writer is not None:
                for image_id, text in journal.rows():
                    writer.write_row(image_id, text)
    if journal is not None:
        journal.path.unlink(missing_ok=True)
    return ([outputs.rle] if outputs.rle is not None else []) + written


def _quiet(settings):
    import dataclasses

    return dataclasses.replace(settings, progress=False)  # the images bar replaces one bar per image


def _small_images(ensemble, images, table, outputs, settings, device, n_images: int, finish) -> None:
    """Consecutive images that fit in one tile: predicted in batches, each written as it comes out."""
    from segkit.infer import run
    from segkit.io.rle import RleStripEncoder

    predictor = EnsemblePredictor(ensemble.models, settings.tta, activation=output_activation(ensemble.classes),
                                  amp=settings.amp)

    def items():
        for image_id, path in images:
            raster = open_raster(path)
            yield (image_id, raster), raster, Window(0, 0, raster.height, raster.width)

    for (image_id, raster), probs in predict_small(predictor, items(), fov_px=ensemble.fov_px, size=ensemble.size,
                                                   preprocess=ensemble.preprocess, batch_size=settings.batch_size,
                                                   device=device, mode=ensemble.small_images):
        masks = run.post_process(iter([(0, probs)]), raster, ensemble.preprocess, settings, ensemble.classes)
        encoder = RleStripEncoder(raster.height, raster.width, order=settings.rle_order) if outputs.rle else None
        paths = run._write_image(masks, raster, image_id, n_images, encoder, outputs, settings, ensemble.classes)
        raster.close()
        finish(image_id, encoder.finish() if encoder is not None else None, paths)
