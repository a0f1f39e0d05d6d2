"""The data fingerprint of small generated images with known objects equals the hand-computed one."""

import numpy as np
import pytest
import tifffile

from segkit.data.dataset import LabelOptions
from segkit.data.fingerprint import bit_depth, fingerprint, window_objects
from segkit.data.manifest import ManifestRow
from segkit.ground.geometry import Window

H, W = 70, 90
# (row, col, height, width) of four squares: 10x10 and 6x6 alone, two 8x8 side by side (touching)
SQUARES = [(5, 5, 10, 10), (40, 60, 6, 6), (30, 20, 8, 8), (30, 28, 8, 8)]


def _write(tmp_path, offset=1000):
    ids = np.zeros((H, W), np.uint16)
    for k, (r, c, h, w) in enumerate(SQUARES, start=1):
        ids[r:r + h, c:c + w] = k
    image = (offset + np.arange(H * W, dtype=np.uint32).reshape(H, W) % 3000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    tifffile.imwrite(tmp_path / "mask.tif", (ids > 0).astype(np.uint8))
    return image


def test_fingerprint_of_object_labels_and_16_bit_range(tmp_path):
    image = _write(tmp_path)
    row = ManifestRow("img", tmp_path / "img.tif", label=str(tmp_path / "ids.tif"))
    fp = fingerprint([row], LabelOptions())
    im = fp["images"][0]
    assert (im["height"], im["width"], im["dtype"], im["bands"]) == (H, W, "uint16", 1)
    assert im["bits"] == int(np.ceil(np.log2(int(image.max()) + 1)))  # 12: values 1000..3999
    assert im["range"] == [[round(float(np.percentile(image, 1)), 3), round(float(np.percentile(image, 99)), 3)]]
    labels = fp["labels"]
    areas = [h * w for _, _, h, w in SQUARES]
    assert labels["object_labels"] == "instances"
    assert labels["objects"] == 4 and labels["measured_objects"] == 4
    assert labels["area_px"]["max"] == 100 and labels["area_px"]["p50"] == float(np.percentile(areas, 50))
    assert labels["diameter_px"]["max"] == round(2 * np.sqrt(100 / np.pi), 1)
    assert labels["touching_share"] == 0.5  # the two 8x8 squares
    assert labels["foreground_share"] == round(sum(areas) / (H * W), 5)


def test_a_class_mask_merges_touching_objects(tmp_path):
    _write(tmp_path)
    row = ManifestRow("img", tmp_path / "img.tif", label=str(tmp_path / "mask.tif"))
    labels = fingerprint([row], LabelOptions())["labels"]
    assert labels["object_labels"] == "mask"
    assert labels["objects"] == 3 and labels["area_px"]["max"] == 128  # the touching pair is one component
    assert labels["touching_share"] == 0.0


def test_objects_cut_by_an_inner_window_edge_are_not_measured():
    ids = np.zeros((20, 20), np.int32)
    ids[2:6, 2:6] = 1  # whole
    ids[10:20, 15:20] = 2  # on the window's right edge, which is inside the image
    whole, seen, touching = window_objects(ids, Window(0, 0, 20, 20), height=40, width=40)
    assert whole == [16] and seen == 2 and touching == 0
    whole, _, _ = window_objects(ids, Window(0, 0, 20, 20), height=20, width=20)  # the image edge: whole
    assert sorted(whole) == [16, 50]


@pytest.mark.parametrize("dtype,maximum,bits", [("uint8", 255, 8), ("uint16", 4095, 12), ("uint16", 65535, 16),
                                                ("uint16", 10, 8), ("float32", 1.0, 32)])
def test_bit_depth(dtype, maximum, bits):
    assert bit_depth(np.dtype(dtype), maximum) == bits


def test_mixed_bands_are_named(tmp_path):
    _write(tmp_path)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((30, 30, 3), np.uint8))
    rows = [ManifestRow("a", tmp_path / "img.tif"), ManifestRow("b", tmp_path / "img.tif"),
            ManifestRow("c", tmp_path / "rgb.tif")]
    fp = fingerprint(rows, LabelOptions())
    assert fp["majority"] == {"bands": 1, "dtype": "uint16"} and fp["odd"] == ["c"]
