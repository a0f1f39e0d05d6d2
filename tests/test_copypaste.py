"""Object copy-paste on semantic masks: bank building, agreement of pixels and mask, soft edges, seeds."""

import warnings

import cv2
import numpy as np
import pytest

from segkit.data.copypaste import CopyPaste, ObjectBank, create_copy_paste
from segkit.ground.errors import SegkitError


def source_window():
    """Channel 0 is 1.0 everywhere, channel 1 is 0.5: pasted values reveal alpha exactly."""
    image = np.empty((41, 53, 2), np.float32)
    image[..., 0], image[..., 1] = 1.0, 0.5
    mask = np.zeros((41, 53), np.uint8)
    cv2.circle(mask, (15, 14), 5, 1, -1)  # class 1 disk, 81 px
    cv2.circle(mask, (38, 27), 4, 2, -1)  # class 2 disk, 49 px
    mask[2:4, 30:32] = 1  # 4 px: below min_px
    mask[30:41, 0:6] = 1  # cut by the window edge: skipped unless keep_cut
    return image, mask


@pytest.fixture
def bank():
    return ObjectBank.from_samples([source_window()], min_px=16, margin=3)


def pasted(cp, shape=(37, 45)):
    image = np.zeros(shape + (2,), np.float32)
    mask = np.zeros(shape, np.uint8)
    return cp(image, mask)


def test_bank_keeps_whole_objects_per_class(bank):
    assert bank.counts() == {1: 1, 2: 1} and len(bank) == 2 and bank.channels == 2
    disk = bank.objects[1][0]
    assert disk.area == 81 and disk.mask.sum() == 81
    assert disk.image.shape == (11 + 6, 11 + 6, 2)  # 11 px disk + 3 px margin on each side
    assert disk.pixels.shape == (17, 17, 3) and not disk.mask[[0, -1]].any() and not disk.mask[:, [0, -1]].any()
    with_cut = ObjectBank.from_samples([source_window()], min_px=16, keep_cut=True)
    assert with_cut.counts() == {1: 2, 2: 1}
    assert ObjectBank.from_samples([source_window()], max_side=10).counts() == {2: 1}


def test_bank_caps_objects_per_class_by_reservoir_sampling():
    image, mask = source_window()
    bank = ObjectBank(max_per_class=3, seed=1)
    for _ in range(10):
        bank.add(image, mask)
    assert bank.counts() == {1: 3, 2: 3} and bank.seen == {1: 10, 2: 10}


@pytest.mark.parametrize("seed", range(6))
def test_pasted_pixels_and_mask_agree_exactly_without_resampling(bank, seed):
    cp = CopyPaste(bank, p=1, count=1, scale=1, rotate=0, blur_sigma=1.0, seed=seed)
    image, mask = pasted(cp)
    alpha = image[..., 0]
    assert set(np.unique(mask)) in ({0, 1}, {0, 2})
    np.testing.assert_array_equal(mask > 0, alpha >= 0.5)
    np.testing.assert_array_equal(image[..., 1], alpha * 0.5)
    # the 0.5 level of a blurred disk lies slightly inside it (curvature): 49 or 81 px, a little less
    assert 0.85 * 49 <= (mask > 0).sum() <= 81


@pytest.mark.parametrize("seed", range(6))
def test_pasted_pixels_and_mask_agree_with_rotation_and_scale(bank, seed):
    cp = CopyPaste(bank, p=1, count=1, scale=(0.7, 1.4), rotate=45, blur_sigma=1.5, seed=seed)
    image, mask = pasted(cp)
    alpha = image[..., 0]
    clear = np.abs(alpha - 0.5) > 1e-4  # away from float rounding at exactly alpha == 0.5
    assert mask.any()
    np.testing.assert_array_equal((mask > 0)[clear], (alpha >= 0.5)[clear])
    np.testing.assert_allclose(image[..., 1], alpha * 0.5, atol=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_objects_stay_inside_the_window_even_when_scaled_up(bank, seed):
    cp = CopyPaste(bank, p=1, count=(2, 4), scale=(1.5, 4.0), rotate=90, seed=seed)
    image, mask = pasted(cp, shape=(23, 29))
    assert mask.any()
    edges = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert not edges.any()
    alpha_edges = np.concatenate([image[0, :, 0], image[-1, :, 0], image[:, 0, 0], image[:, -1, 0]])
    assert alpha_edges.max() < 0.05


def test_edges_are_soft_and_hard_without_blur(bank):
    image, mask = pasted(CopyPaste(bank, p=1, count=1, scale=1, rotate=0, blur_sigma=1.0, seed=3))
    alpha, inside = image[..., 0], mask > 0
    eroded = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    dilated = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    border_in, border_out = inside & ~eroded, dilated & ~inside
    assert border_in.any() and border_out.any()
    assert ((alpha[border_in] > 0) & (alpha[border_in] < 1)).all()
    assert ((alpha[border_out] > 0) & (alpha[border_out] < 0.5)).all()
    hard, _ = pasted(CopyPaste(bank, p=1, count=1, scale=1, rotate=0, blur_sigma=0, seed=3))
    assert set(np.unique(hard[..., 0])) == {0.0, 1.0}


def test_probability_zero_changes_nothing(bank):
    image = np.full((20, 24, 2), 0.25, np.float32)
    mask = np.zeros((20, 24), np.uint8)
    mask[3:6, 4:9] = 1
    cp = CopyPaste(bank, p=0, count=5, seed=0)
    for _ in range(5):
        out_image, out_mask = cp(image, mask)
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_mask, mask)


def test_inputs_are_not_modified(bank):
    image = np.zeros((30, 30, 2), np.float32)
    mask = np.zeros((30, 30), np.uint8)
    out_image, out_mask = CopyPaste(bank, p=1, count=3, seed=0)(image, mask)
    assert out_mask.any() and not mask.any() and not image.any()


def test_reproducible_with_a_seed(bank):
    runs = []
    for seed in (7, 7, 8):
        cp = CopyPaste(bank, p=0.7, count=(1, 3), seed=seed)
        runs.append([pasted(cp) for _ in range(4)])
    for (a_img, a_mask), (b_img, b_mask) in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_mask, b_mask)
    assert any(not np.array_equal(a[1], c[1]) for a, c in zip(runs[0], runs[2]))


def test_class_weights_default_to_inverse_frequency():
    image, mask = source_window()
    bank = ObjectBank()
    for _ in range(9):
        bank.add(image, np.where(mask == 2, 0, mask).astype(np.uint8))
    bank.add(image, mask)  # class 2 only once: 10 objects of class 1, 1 of class 2
    assert bank.counts() == {1: 10, 2: 1}
    classes, probs = CopyPaste(bank)._class_probs()
    assert classes == [1, 2] and np.allclose(probs, [1 / 11, 10 / 11])  # P(class) ~ 1 / its count
    assert np.allclose(CopyPaste(bank, class_weights="balanced")._class_probs()[1], [0.5, 0.5])
    assert np.allclose(CopyPaste(bank, class_weights="frequency")._class_probs()[1], [10 / 11, 1 / 11])
    only_rare = CopyPaste(bank, p=1, count=3, class_weights={2: 1.0}, seed=0)
    for _ in range(5):
        assert set(np.unique(pasted(only_rare)[1])) == {0, 2}
    with pytest.raises(SegkitError, match="no class of the bank"):
        CopyPaste(bank, p=1, class_weights={5: 1.0})(np.zeros((30, 30, 2), np.float32), np.zeros((30, 30), np.uint8))


def test_empty_bank_warns_once_then_does_nothing():
    image = np.zeros((10, 12, 2), np.float32)
    bank = ObjectBank.from_samples([(image, np.zeros((10, 12), np.uint8))])
    cp = CopyPaste(bank, p=1)
    with pytest.warns(UserWarning, match="object bank is empty"):
        out, _ = cp(image, np.zeros((10, 12), np.uint8))
    assert out is image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cp(image, np.zeros((10, 12), np.uint8))
    assert caught == []


def test_bad_settings_are_one_line_errors(bank):
    with pytest.raises(SegkitError, match="window has 3 channels but the object bank holds 2"):
        CopyPaste(bank, p=1)(np.zeros((20, 20, 3), np.float32), np.zeros((20, 20), np.uint8))
    with pytest.raises(SegkitError, match=r"^copy_paste: unknown key 'propability'.*valid keys: p, count"):
        create_copy_paste({"propability": 0.5}, bank)
    with pytest.raises(SegkitError, match=r"copy_paste.scale: expected"):
        create_copy_paste({"scale": [2, 1]}, bank)
    with pytest.raises(SegkitError, match=r"copy_paste.p: expected a probability"):
        create_copy_paste({"p": 1.5}, bank)
    assert create_copy_paste({"p": 0.3, "count": [1, 2], "min_px": 4}, bank).count == (1, 2)


def test_flips_through_the_warp_give_mirror_images_of_the_object():
    image = np.ones((30, 30, 1), np.float32)
    mask = np.zeros((30, 30), np.uint8)
    mask[5:20, 5:9] = 1
    mask[16:20, 9:18] = 1  # an L: every flip is a different shape
    bank = ObjectBank.from_samples([(image, mask)])
    shape = mask[5:20, 5:18].astype(bool)
    seen = set()
    for seed in range(12):
        cp = CopyPaste(bank, p=1, count=1, scale=1, rotate=(0.001, 0.001), blur_sigma=0, seed=seed)
        _, out = cp(np.zeros((40, 40, 1), np.float32), np.zeros((40, 40), np.uint8))
        rows, cols = np.nonzero(out)
        pasted = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(bool)
        match = [name for name, ref in [("none", shape), ("h", shape[:, ::-1]), ("v", shape[::-1]),
                                        ("hv", shape[::-1, ::-1])] if np.array_equal(pasted, ref)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {"none", "h", "v", "hv"}


def test_objects_cut_by_the_window_edge_paste_cleanly_with_keep_cut():
    image, mask = source_window()
    bank = ObjectBank.from_samples([(image, mask)], keep_cut=True, margin=0)
    cut = [o for o in bank.objects[1] if o.area != 81][0]
    assert not cut.mask[[0, -1]].any() and not cut.mask[:, [0, -1]].any()  # ring of alpha 0 added
    for seed in range(4):
        out, out_mask = pasted(CopyPaste(bank, p=1, count=1, seed=seed))  # 1: overlaps compound alpha
        clear = np.abs(out[..., 0] - 0.5) > 1e-4
        np.testing.assert_array_equal((out_mask > 0)[clear], (out[..., 0] >= 0.5)[clear])
        assert not np.concatenate([out_mask[0], out_mask[-1], out_mask[:, 0], out_mask[:, -1]]).any()


def test_integer_windows_stay_integer():
    image = np.full((41, 53, 1), 200, np.uint8)
    _, mask = source_window()
    bank = ObjectBank.from_samples([(image, mask)])
    out, out_mask = CopyPaste(bank, p=1, count=1, seed=0)(np.zeros((30, 30, 1), np.uint8), np.zeros((30, 30), np.uint8))
    assert out.dtype == np.uint8 and out.max() == 200 and out_mask.any()
    clear = np.abs(out[..., 0].astype(int) - 100) > 1  # rounding to integers blurs alpha = 0.5 by one level
    np.testing.assert_array_equal((out_mask > 0)[clear], (out[..., 0] >= 100)[clear])
