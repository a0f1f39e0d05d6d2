"""Sparse labels: several labelled rectangles per image train correctly.

Windows are drawn inside the rows' regions, pixels outside a region are ignored (never taken for
background), ignored pixels move no loss, and the manifest's weight column scales sampling.
"""

import csv

import numpy as np
import tifffile
import torch

from segkit.data.dataset import LabelOptions, RandomWindowDataset, open_pairs
from segkit.data.grids import create_sampler, sampling_area
from segkit.data.manifest import ManifestRow, read_manifest, write_manifest
from segkit.data.windows import outside_region
from segkit.ground.geometry import Window
from segkit.ground.ignore import IGNORE_INDEX
from segkit.models.losses import create_task_loss


def _image_with_regions(root, regions, weights=None):
    """One 120x150 image whose label is all foreground; one manifest row per region."""
    rng = np.random.default_rng(1)
    tifffile.imwrite(root / "a.tif", rng.integers(0, 255, (120, 150), dtype=np.uint8))
    tifffile.imwrite(root / "a_mask.tif", np.ones((120, 150), np.uint8))
    with open(root / "m.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "label", "region", "weight"])
        for k, region in enumerate(regions):
            weight = "" if weights is None else weights[k]
            writer.writerow([f"a{k}", "a.tif", "a_mask.tif", ",".join(map(str, region)), weight])
    return read_manifest(root / "m.csv")


def _sampler(rows, fov):
    pairs = open_pairs(rows, LabelOptions())
    areas = [sampling_area(p, "none") for p in pairs]
    return pairs, create_sampler(pairs, areas, fov, foreground_share=0.5)


def test_windows_are_drawn_inside_each_rows_region(tmp_path, own_cache):
    regions = [(0, 0, 40, 50), (60, 70, 50, 64)]
    rows = _image_with_regions(tmp_path, regions)
    _, sampler = _sampler(rows, 32)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        index, w = sampler.sample(rng)
        reg = Window(*regions[index])
        seen.add(index)
        assert reg.row <= w.row and w.bottom <= reg.bottom and reg.col <= w.col and w.right <= reg.right, (index, w)
    assert seen == {0, 1}


def test_pixels_outside_a_small_region_are_ignored_not_background(tmp_path, own_cache):
    from segkit.data.preprocess import Preprocess
    from segkit.data.channels import parse_channels, resolve_channels

    rows = _image_with_regions(tmp_path, [(10, 20, 20, 24)])  # smaller than the 48 px window
    pairs, sampler = _sampler(rows, 48)
    specs = parse_channels(None, bands=1, dtype=np.uint8)
    preprocess = Preprocess(resolve_channels(specs, np.zeros((8, 8, 1), np.uint8)))
    data = RandomWindowDataset(pairs, sampler, size=48, length=4, preprocess=preprocess)
    for index in range(4):
        _, mask, window = data.read(index)
        assert window.row == 10 and window.col == 20  # the region's origin (it is smaller than the window)
        assert (mask[:20, :24] == 1).all()  # the labelled rectangle keeps its labels
        assert np.count_nonzero(mask == IGNORE_INDEX) == 48 * 48 - 20 * 24
        assert not (mask == 0).any()  # nothing outside became background


def test_outside_region_at_network_size():
    out = outside_region(Window(0, 0, 64, 64), Window(0, 0, 32, 64), (32, 32))  # read at half size
    assert out[:16].sum() == 0 and out[16:].all()


def test_ignored_pixels_move_no_loss():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 1, 16, 16)).float()
    target[:, :, :, 8:] = IGNORE_INDEX
    for classes, terms in ((1, "dice+soft_bce"), (1, "focal+lovasz"), (3, "ce+dice")):
        loss = create_task_loss("seg", seg_terms=terms, cls_terms="ce", classes=classes, ignore_index=IGNORE_INDEX)
        t = target if classes == 1 else target.squeeze(1).long() * 2 % 256
        t = t if classes == 1 else torch.where(target.squeeze(1) == IGNORE_INDEX, IGNORE_INDEX, t).long()
        logits = torch.randn(2, classes, 16, 16, requires_grad=True)
        value = loss(logits, t)
        value.backward()
        assert torch.isfinite(value)
        assert logits.grad[:, :, :, 8:].abs().max() == 0, terms  # ignored pixels get no gradient
        assert logits.grad[:, :, :, :8].abs().max() > 0, terms
        changed = logits.detach().clone()
        changed[:, :, :, 8:] = torch.randn(2, classes, 16, 8) * 10
        assert torch.allclose(loss(changed, t), value.detach(), atol=1e-6), terms


def test_weight_column_round_trips_and_scales_sampling(tmp_path, own_cache):
    rows = _image_with_regions(tmp_path, [(0, 0, 40, 40), (60, 60, 40, 40)], weights=["", "3"])
    assert rows[0].weight is None and rows[1].weight == 3.0
    _, sampler = _sampler(rows, 32)
    assert np.allclose(sampler.probabilities, [0.25, 0.75])
    write_manifest(rows, tmp_path / "out.csv")
    assert [r.weight for r in read_manifest(tmp_path / "out.csv")] == [None, 3.0]
    plain = [ManifestRow(id=r.id, image=r.image, label=r.label, region=r.region) for r in rows]
    write_manifest(plain, tmp_path / "plain.csv")  # no weights: the old header, readable by older segkit
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == "id,image,label,class,group,region,fold"
