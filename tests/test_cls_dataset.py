"""The classification dataset: rows resized or random-cropped to the network size, regions of large images,
items a pure function of (seed, epoch, rank, index), readers in a small LRU cache."""

import cv2
import numpy as np
import pytest
import tifffile
import torch

from segkit.data.channels import parse_channels
from segkit.data.classes import resolve_classes
from segkit.data.cls_dataset import ClassImageDataset, RasterCache, random_crop
from segkit.data.manifest import ManifestRow, read_manifest
from segkit.data.preprocess import Preprocess
from segkit.ground.geometry import Window


def _preprocess(bands=3):
    return Preprocess(parse_channels(None, bands=bands, dtype=np.uint8))


def test_digit_rows_become_network_sized_items(digits):
    rows, names = resolve_classes(read_manifest(digits / "train.csv"), [str(i) for i in range(10)], "train.csv")
    dataset = ClassImageDataset(rows, size=24, preprocess=_preprocess(), seed=3)
    assert len(dataset) == len(rows) == 60 and names[7] == "7"
    item = dataset[5]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    row = rows[int(item["window"][0])]
    assert int(item["target"]) == row.target and tuple(item["window"][1:].tolist()) == (0, 0, 16, 16)
    expected = cv2.resize(cv2.imread(str(row.image))[:, :, ::-1], (24, 24), interpolation=cv2.INTER_LINEAR) / 255.0
    assert np.allclose(item["image"].numpy().transpose(1, 2, 0), expected, atol=1.5 / 255)
    dataset.set_epoch(1)
    seen = sorted(int(dataset[i]["window"][0]) for i in range(len(dataset)))
    assert seen == list(range(60))  # every row once per epoch


def test_random_crops_are_seeded_per_item_and_stay_inside(digits):
    rows, _ = resolve_classes(read_manifest(digits / "train.csv"), None, "train.csv")
    a = ClassImageDataset(rows, size=16, preprocess=_preprocess(), seed=1, crop_scale=(0.3, 0.6))
    b = ClassImageDataset(rows, size=16, preprocess=_preprocess(), seed=1, crop_scale=(0.3, 0.6))
    a.set_epoch(2), b.set_epoch(2)
    windows = [a[i]["window"][1:].tolist() for i in range(20)]
    assert windows == [b[i]["window"][1:].tolist() for i in range(20)]
    for r, c, h, w in windows:
        assert 0 <= r and 0 <= c and r + h <= 16 and c + w <= 16 and 0.2 * 256 <= h * w <= 0.7 * 256
    assert torch.equal(a[3]["image"], b[3]["image"])
    rng = np.random.default_rng(0)
    assert random_crop(Window(5, 5, 1, 1), (0.5, 0.6), rng) == Window(5, 5, 1, 1)  # nothing smaller fits


def test_region_rows_of_one_large_image_share_a_reader(tmp_path):
    image = np.zeros((300, 500), np.uint8)
    image[:, 250:] = 200  # right half bright
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(64, 64))
    rows = [ManifestRow(id="dark", image=tmp_path / "slide.tif", target=0, region=Window(10, 20, 100, 100)),
            ManifestRow(id="bright", image=tmp_path / "slide.tif", target=1, region=Window(150, 300, 120, 180))]
    dataset = ClassImageDataset(rows, size=32, preprocess=_preprocess(1), balanced=True, min_length=4)
    assert len(dataset) == 4
    for i in range(4):
        item = dataset[i]
        assert item["image"].shape == (1, 32, 32)
        assert float(item["image"].mean()) == pytest.approx(0.0 if int(item["target"]) == 0 else 200 / 255)
    assert len(dataset.cache._open) == 1


def test_raster_cache_closes_the_least_recently_used(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((4, 4), i, np.uint8))
    cache = RasterCache(max_open=2)
    first = cache.get(tmp_path / "0.png")
    cache.get(tmp_path / "1.png"), cache.get(tmp_path / "0.png"), cache.get(tmp_path / "2.png")
    assert list(cache._open) == [str(tmp_path / "0.png"), str(tmp_path / "2.png")] and cache.get(tmp_path / "0.png") is first


def test_a_balanced_epoch_with_mixup_trains_a_step_through_the_one_loop(digits):
    from torch.utils.data import DataLoader

    from segkit.data.mixing import create_mixup
    from segkit.models.factory import create_model
    from segkit.models.losses import create_task_loss
    from segkit.train.loop import train_one_epoch

    rows, _ = resolve_classes(read_manifest(digits / "train.csv"), None, "train.csv")
    dataset = ClassImageDataset(rows[:20], size=16, preprocess=_preprocess(), balanced=True, min_length=8)
    model = create_model(encoder="resnet18", in_channels=3, classes=10, task="cls")
    before = [p.detach().clone() for p in model.classification_head.parameters()]
    mix = create_mixup({"mixup_alpha": 0.4, "cutmix_alpha": 1.0}, classes=10, batch_size=8)
    stats = train_one_epoch(model, DataLoader(dataset, batch_size=8, drop_last=True), create_task_loss(
        "cls", seg_terms=None, cls_terms=[{"name": "focal", "label_smoothing": 0.1}], classes=10),
        torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", max_steps=1, progress=False, batch_transform=mix)
    assert stats["steps"] == 1 and np.isfinite(stats["loss"]) and mix.calls == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.classification_head.parameters()))
