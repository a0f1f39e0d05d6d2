"""RandomWindowDataset, SourcePair, sampling_area: windows through DataLoader workers, pickling,
the cached thumbnail grids and the errors that name the file."""

import csv
import json
import os
import pickle
import warnings

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
import torch
from rasterio.features import shapes
from rasterio.transform import from_origin
from torch.utils.data import DataLoader

from segkit.data import grids as grids_mod
from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.dataset import (
    LabelOptions,
    RandomWindowDataset,
    SourcePair,
    open_pairs,
)
from segkit.data.grids import (
    clear_memory_cache,
    create_sampler,
    foreground_fraction,
    image_thumbnail,
    sampling_area,
)
from segkit.data.manifest import ManifestRow
from segkit.data.preprocess import Preprocess
from segkit.data.windows import RandomWindowSampler, SamplingArea
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window
from segkit.io import rle
from segkit.io.images.raster import Raster

H, W = 203, 317  # not multiples of anything
BRIGHT, DARK = 220, 40
TRANSFORM = from_origin(500000, 4600000, 0.5, 0.5)


pytestmark = pytest.mark.usefixtures("own_cache")


def _mask():
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (60, 50), 25, 1, -1)
    cv2.rectangle(m, (200, 120), (290, 190), 1, -1)
    m[0:4, 300:] = 1  # touches the border
    return m


def _image(m):
    """Labelled pixels bright, the rest dark, with a gentle texture that keeps them apart."""
    yy, xx = np.mgrid[:H, :W]
    base = np.where(m > 0, BRIGHT, DARK) + ((yy + xx) % 7)
    return np.stack([base, base // 2 + 10, 255 - base], -1).astype(np.uint8)


@pytest.fixture()
def files(tmp_path):
    """The same labels as a mask raster, an RLE CSV and GeoJSON polygons; images as TIFF, GeoTIFF, PNG."""
    m = _mask()
    img = _image(m)
    tifffile.imwrite(tmp_path / "slide.tif", img, tile=(64, 64), compression="zlib")
    cv2.imwrite(str(tmp_path / "slide.png"), img[:, :, ::-1])
    with rasterio.open(tmp_path / "geo.tif", "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM) as dst:
        dst.write(img.transpose(2, 0, 1))
    tifffile.imwrite(tmp_path / "mask.tif", m)
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "rle"])
        writer.writerow(["slide", rle.encode(m)])
    features = [{"type": "Feature", "properties": {}, "geometry": g} for g, _ in shapes(m, mask=m > 0)]
    (tmp_path / "pixels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return tmp_path, m, img


def _row(path, label, **kw):
    return ManifestRow(id=kw.pop("id", "slide"), image=path, label=str(label) if label else None, **kw)


def _dataset(pairs, *, fov=40, size=40, length=16, share=0.33, tissue="none"):
    areas = [sampling_area(p, tissue) for p in pairs]
    sampler = create_sampler(pairs, areas, fov, foreground_share=share)
    raster = pairs[0].raster
    specs = resolve_channels(parse_channels(None, bands=raster.channels, dtype=raster.dtype), raster.thumbnail(64)[0])
    return RandomWindowDataset(pairs, sampler, size=size, length=length, preprocess=Preprocess(specs), seed=3)


LABEL_KINDS = ["mask.tif", "labels.csv", "pixels.geojson"]


@pytest.mark.parametrize("label", LABEL_KINDS)
def test_windows_and_masks_line_up_for_every_label_kind(files, label):
    root, m, img = files
    pairs = open_pairs([_row(root / "slide.tif", root / label)], LabelOptions())
    dataset = _dataset(pairs, share=0.5)
    for i in range(len(dataset)):
        raw, mask, window = dataset.read(i)
        assert 0 <= window.row and window.bottom <= H and 0 <= window.col and window.right <= W
        assert np.array_equal(mask, m[window.slices])
        assert np.array_equal(raw, img[window.slices])
        item = dataset[i]
        assert item["image"].shape == (3, 40, 40) and item["image"].dtype == torch.float32
        assert torch.equal(item["mask"], torch.from_numpy(m[window.slices].astype(np.int64)))
        assert item["window"].tolist() == [0, *window]


def test_foreground_share_one_centres_every_window_on_a_label(files):
    root, m, _ = files
    pairs = open_pairs([_row(root / "slide.tif", root / "labels.csv")], LabelOptions())
    dataset = _dataset(pairs, fov=24, size=12, length=40, share=1.0)
    assert all(dataset.read(i)[1].any() for i in range(len(dataset)))
    uniform = _dataset(pairs, fov=24, size=12, length=40, share=0.0)
    assert sum(uniform.read(i)[1].any() for i in range(len(uniform))) < 35  # labels cover ~20% of the image


def test_two_dataloader_workers_yield_distinct_windows_identical_to_one_process(files):
    root, _, _ = files
    rows = [_row(root / "slide.tif", root / "mask.tif"),
            _row(root / "geo.tif", root / "labels.csv", id="slide2")]
    # the RLE row id must match the CSV: relabel it to "slide" through a copy of the CSV
    (root / "labels2.csv").write_text((root / "labels.csv").read_text().replace("slide,", "slide2,"))
    rows[1].label = str(root / "labels2.csv")
    pairs = open_pairs(rows, LabelOptions())  # opened here, in the parent: workers must reopen
    dataset = _dataset(pairs, fov=32, size=16, length=24)
    dataset.set_epoch(2)
    serial = list(DataLoader(dataset, batch_size=4, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=4, num_workers=2))
    windows = [tuple(w.tolist()) for batch in parallel for w in batch["window"]]
    assert len(set(windows)) == len(windows) == 24
    by_worker = [{tuple(w.tolist()) for w in parallel[k]["window"]} for k in (0, 1)]  # batches alternate workers
    assert not by_worker[0] & by_worker[1]
    assert {i[0] for i in windows} == {0, 1}  # both images drawn
    for a, b in zip(serial, parallel):
        assert torch.equal(a["window"], b["window"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    dataset.set_epoch(3)
    assert not torch.equal(next(iter(DataLoader(dataset, batch_size=4)))["window"], serial[0]["window"])


@pytest.mark.parametrize("image, label", [("slide.tif", "pixels.geojson"), ("geo.tif", "mask.tif"),
                                          ("slide.png", "labels.csv")])
def test_dataset_pickles_without_handles_after_reading(files, image, label):
    root, _, _ = files
    pairs = open_pairs([_row(root / image, root / label)], LabelOptions())
    dataset = _dataset(pairs)
    before = [dataset[i] for i in range(4)]
    assert pairs[0]._raster is not None and pairs[0]._labels is not None
    blob = pickle.dumps(dataset)
    # nothing but paths, options and the sampler's small grids: no decoded image, no file handle
    assert len(blob) - len(pickle.dumps(dataset.sampler)) < 20_000
    clone = pickle.loads(blob)
    assert clone.pairs[0]._raster is None and clone.pairs[0]._labels is None
    for i, item in enumerate(before):
        again = clone[i]
        assert torch.equal(again["image"], item["image"]) and torch.equal(again["mask"], item["mask"])
    assert pairs[0]._raster is not None  # the original keeps its readers


def test_class_rows_without_labels_yield_targets(files):
    root, _, _ = files
    pairs = open_pairs([_row(root / "slide.tif", None, target=2)], LabelOptions())
    dataset = _dataset(pairs, length=2)
    item = dataset[0]
    assert "mask" not in item and item["target"].item() == 2


def _counting(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapped)
    return calls


def test_thumbnail_grids_are_cached_in_memory_and_on_disk(files, monkeypatch, tmp_path):
    root, m, _ = files
    from segkit.io.labels.masks import RleLabels

    image_calls = _counting(monkeypatch, Raster, "thumbnail")
    label_calls = _counting(monkeypatch, RleLabels, "thumbnail")
    row = _row(root / "slide.tif", root / "labels.csv")
    first = sampling_area(SourcePair(row, LabelOptions()), "saturation")
    assert (len(image_calls), len(label_calls)) == (1, 1)
    assert np.array_equal(first.foreground, m > 0) and first.scale == 1.0
    assert first.usable.shape == (H, W) and first.usable.any()

    again = sampling_area(SourcePair(row, LabelOptions()), "saturation")  # memory
    clear_memory_cache()
    from_disk = sampling_area(SourcePair(row, LabelOptions()), "saturation")  # disk
    assert (len(image_calls), len(label_calls)) == (1, 1)
    for area in (again, from_disk):
        assert np.array_equal(area.usable, first.usable) and np.array_equal(area.foreground, first.foreground)
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "thumbs").glob("*.npz"))
    assert cached == ["foreground", "usable"]

    otsu = sampling_area(SourcePair(row, LabelOptions()), "otsu")  # another method: a new usable grid
    assert len(list((tmp_path / "cache" / "thumbs").glob("usable-*.npz"))) == 2
    thumb, scale = image_thumbnail(SourcePair(row, LabelOptions()))  # the raw thumbnail read for it
    assert (len(image_calls), len(label_calls)) == (2, 1) and scale == 1.0 and not thumb.flags.writeable
    assert not np.array_equal(otsu.usable, first.usable)
    stat = os.stat(root / "labels.csv")
    os.utime(root / "labels.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited labels
    sampling_area(SourcePair(row, LabelOptions()), "otsu")
    assert (len(image_calls), len(label_calls)) == (2, 2)


def test_disabled_or_corrupt_disk_cache_recomputes(files, monkeypatch, tmp_path):
    root, _, _ = files
    calls = _counting(monkeypatch, Raster, "thumbnail")
    row = _row(root / "slide.tif", None)
    sampling_area(SourcePair(row, LabelOptions()), "none", cache="off")
    clear_memory_cache()
    sampling_area(SourcePair(row, LabelOptions()), "none", cache="off")
    assert len(calls) == 2 and not (tmp_path / "cache").exists()
    clear_memory_cache()
    sampling_area(SourcePair(row, LabelOptions()), "none")
    for path in (tmp_path / "cache" / "thumbs").glob("*.npz"):
        path.write_bytes(b"not a zip")
    clear_memory_cache()
    area = sampling_area(SourcePair(row, LabelOptions()), "none")
    assert len(calls) == 4 and area.usable.all()


def test_foreground_fraction_of_the_region(files):
    root, m, _ = files
    pair = SourcePair(_row(root / "slide.tif", root / "mask.tif"), LabelOptions())
    assert foreground_fraction(pair) == pytest.approx(m.mean())
    region = Window(110, 190, 90, 110)
    pair = SourcePair(_row(root / "slide.tif", root / "mask.tif", region=region), LabelOptions())
    assert foreground_fraction(pair) == pytest.approx(m[region.slices].mean())


def test_image_without_usable_area_is_an_error_naming_the_file(tmp_path):
    blank = np.full((50, 70, 3), 200, np.uint8)
    tifffile.imwrite(tmp_path / "blank.tif", blank)
    pair = open_pairs([_row(tmp_path / "blank.tif", None)], LabelOptions())[0]
    with pytest.raises(SegkitError, match=r"blank\.tif.*no usable area in the image \(data\.tissue=otsu"):
        sampling_area(pair, "otsu")
    assert sampling_area(pair, "none").usable.all()


def test_region_outside_the_image_is_an_error_naming_the_row(files):
    root, _, _ = files
    row = _row(root / "slide.tif", root / "mask.tif", id="far", region=Window(500, 0, 10, 10))
    with pytest.raises(SegkitError, match=r"manifest row 'far' \(.*slide\.tif\): region 500,0,10,10 lies outside"):
        open_pairs([row], LabelOptions())


def test_images_with_different_bands_are_an_error(files):
    root, _, img = files
    tifffile.imwrite(root / "grey.tif", img[:, :, 0])
    rows = [_row(root / "slide.tif", None), _row(root / "grey.tif", None, id="grey")]
    with pytest.raises(SegkitError, match=r"grey\.tif: 1 band\(s\), but 1 of 2 images have 3 \(e\.g\. .*slide\.tif\)"):
        open_pairs(rows, LabelOptions())
    training = open_pairs(rows[:1], LabelOptions())  # validation rows are checked against the training ones
    with pytest.raises(SegkitError, match=r"grey\.tif: 1 band\(s\), but 1 of 2 images have 3 \(e\.g\. .*slide\.tif\)"):
        open_pairs(rows[1:], LabelOptions(), reference=training)


def test_sampler_names_files_and_warns_about_dropped_areas(files):
    root, _, _ = files
    pairs = open_pairs([_row(root / "slide.tif", None, id="a"), _row(root / "slide.png", None, id="b")],
                       LabelOptions())
    full = SamplingArea(H, W, usable=np.ones((H, W), bool))
    empty = SamplingArea(H, W, usable=np.zeros((H, W), bool))
    with pytest.warns(UserWarning, match=r"left out of training: manifest row 'b' \(.*slide\.png\)"):
        sampler = create_sampler(pairs, [full, empty], 16)
    assert sampler.dropped == [1] and all(sampler.sample(np.random.default_rng(i))[0] == 0 for i in range(20))
    with pytest.raises(SegkitError, match=r"slide\.tif, .*slide\.png"):
        create_sampler(pairs, [empty, empty], 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(create_sampler(pairs, [full, full], 16), RandomWindowSampler)
    assert grids_mod.cache_dir("off") is None


@pytest.mark.slow
def test_spawned_workers_reopen_the_readers_from_the_pickled_dataset(files):
    """spawn (macOS/Windows default) pickles the dataset into each worker: same windows as in-process."""
    root, _, _ = files
    pairs = open_pairs([_row(root / "geo.tif", root / "pixels.geojson")], LabelOptions())
    dataset = _dataset(pairs, fov=32, size=16, length=8)
    serial = list(DataLoader(dataset, batch_size=2, num_workers=0))
    spawned = list(DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="spawn"))
    for a, b in zip(serial, spawned, strict=True):
        assert torch.equal(a["window"], b["window"]) and torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])
