"""Preview grid: a readable PNG of the expected size, channels displayed right, outlines per class."""

import cv2
import numpy as np
import pytest

from segkit.ground.errors import SegkitError
from segkit.io.classes import PALETTE
from segkit.report.preview import preview_grid, write_preview


def sample(h, w, c, value=0.5):
    image = np.full((h, w, c), value, np.float32)
    mask = np.zeros((h, w), np.uint8)
    mask[3:9, 4:12] = 1
    mask[10:14, 2:6] = 2
    return image, mask


def test_writes_a_readable_png_of_the_expected_size(tmp_path):
    samples = [sample(17, 21, 3), sample(15, 21, 1), sample(17, 19, 5), sample(17, 21, 2), sample(16, 20, 3)]
    path = write_preview(samples, tmp_path / "out" / "preview.png", columns=3, gap=2)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["preview.png"]
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert png.shape == (2 * 17 + 3 * 2, 3 * 21 + 4 * 2, 3)  # 2 rows x 3 columns of 17x21 cells, 2 px gaps


def test_outlines_are_drawn_in_class_colours_and_inside_is_untouched():
    image, mask = sample(17, 21, 1, value=0.0)
    grid = preview_grid([(image, mask)], gap=0)
    assert grid.shape == (17, 21, 3)
    assert tuple(grid[3, 6]) == PALETTE[0]  # top edge of the class-1 box
    assert tuple(grid[10, 2]) == PALETTE[1]  # corner of the class-2 box
    assert tuple(grid[5, 7]) == (0, 0, 0)  # inside: the image itself
    assert tuple(grid[0, 0]) == (0, 0, 0)


def test_channel_display_rules():
    grey = preview_grid([(np.full((4, 5, 1), 0.5, np.float32), None)], gap=0)
    assert (grey == 128).all()
    two = preview_grid([(np.dstack([np.ones((4, 5)), np.zeros((4, 5))]).astype(np.float32), None)], gap=0)
    assert tuple(two[0, 0]) == (255, 0, 0)
    many = np.zeros((4, 5, 6), np.float32)
    many[..., 2] = 1.0
    many[..., 5] = 1.0  # beyond the first three: not shown
    assert tuple(preview_grid([(many, None)], gap=0)[0, 0]) == (0, 0, 255)
    out_of_range = np.array([[[-1.0], [2.0]]], np.float32)
    assert preview_grid([(out_of_range, None)], gap=0)[0, :, 0].tolist() == [0, 255]
    assert preview_grid([(out_of_range * 3, None)], gap=0, rescale=True)[0, :, 0].tolist() == [0, 255]


def test_bad_inputs():
    with pytest.raises(SegkitError, match="no samples"):
        preview_grid([])
    with pytest.raises(SegkitError, match=r"sample 0 has image \(4, 5\) but mask \(5, 4\)"):
        preview_grid([(np.zeros((4, 5, 3), np.float32), np.zeros((5, 4), np.uint8))])
    with pytest.raises(SegkitError, match="preview must be a .png or .jpg"):
        write_preview([(np.zeros((4, 5, 3), np.float32), None)], "x.tif")
