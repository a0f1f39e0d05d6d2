"""Augmentation from albumentations' serialized form: round trips, seeds, image/mask alignment, errors."""

import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import yaml

from segkit.data.augment import augment_to_dict, create_augment, load_pipeline
from segkit.data.copypaste import ObjectBank
from segkit.ground.errors import SegkitError

CONFIGS = Path(__file__).resolve().parents[1] / "segkit" / "configs"
RECIPES = ["augment_baseline.yaml", "augment_heavy_noise.yaml"]


def window(h=23, w=31, c=3):
    """A mask with distinct labels and an image whose channels all encode the mask (value = 0.25 * class)."""
    mask = np.zeros((h, w), np.uint8)
    mask[2:9, 3:12] = 1
    mask[12:20, 18:29] = 2
    mask[0, :] = 3  # a row touching the top border shows where "up" went
    image = np.repeat((mask.astype(np.float32) * 0.25)[..., None], c, axis=2)
    image[..., -1] += np.linspace(0, 0.1, w, dtype=np.float32)[None]  # break left/right symmetry of the image too
    return image, mask


def recipe(name):
    return yaml.safe_load((CONFIGS / name).read_text())["data"]["augment"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_round_trip_through_albumentations(name):
    spec = recipe(name)
    assert spec["__version__"] == A.__version__
    assert augment_to_dict(load_pipeline(spec)) == spec
    assert augment_to_dict(A.from_dict(spec)) == spec  # plain albumentations reads our YAML as is


@pytest.mark.parametrize("name", RECIPES)
def test_same_seed_same_output(name):
    image, mask = window()
    a, b, c = (create_augment(recipe(name), seed=s) for s in (11, 11, 12))
    outs_a = [a(image, mask) for _ in range(6)]
    outs_b = [b(image, mask) for _ in range(6)]
    outs_c = [c(image, mask) for _ in range(6)]
    for (ia, ma), (ib, mb) in zip(outs_a, outs_b):
        assert ia.dtype == np.float32 and ma.dtype == np.uint8
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert any(not np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(outs_a, outs_c))


def test_transform_part_and_list_forms_load_too():
    spec = recipe("augment_baseline.yaml")
    assert augment_to_dict(load_pipeline(spec["transform"])) == spec
    listed = load_pipeline([{"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "Transpose"}])
    assert [type(t).__name__ for t in listed.transforms] == ["HorizontalFlip", "Transpose"]
    assert listed.transforms[1].p == A.Transpose().p  # missing p -> the class default, not from_dict's 0.5


def test_geometric_transforms_move_image_and_mask_alike():
    spec = [
        {"__class_fullname__": "HorizontalFlip", "p": 0.5},
        {"__class_fullname__": "VerticalFlip", "p": 0.5},
        {"__class_fullname__": "RandomRotate90", "p": 0.5},
        {"__class_fullname__": "Transpose", "p": 0.5},
        {"__class_fullname__": "Affine", "p": 0.5, "rotate": [-40, 40], "scale": [0.8, 1.2], "interpolation": 0,
         "mask_interpolation": 0, "border_mode": cv2.BORDER_REFLECT_101},
    ]
    aug = create_augment(spec, seed=0)
    image, mask = window()
    shapes = set()
    for _ in range(12):
        out_image, out_mask = aug(image, mask)
        shapes.add(out_mask.shape)
        np.testing.assert_array_equal(out_image[..., 0], out_mask.astype(np.float32) * 0.25)
    assert shapes == {(23, 31), (31, 23)}  # rot90/transpose on a non-square window


def test_one_shared_generator_keeps_flips_independent():
    # albumentations' own Compose(seed=) seeds every transform identically: both flips fire together.
    aug = create_augment([{"__class_fullname__": "HorizontalFlip", "p": 0.5},
                          {"__class_fullname__": "VerticalFlip", "p": 0.5}], seed=5)
    image, mask = window()
    outcomes = set()
    for _ in range(40):
        _, out = aug(image, mask)
        vflipped = bool((out[-1] == 3).all())
        hflipped = bool((out == 1).any(axis=0)[-5])  # the class-1 block sits at columns 3..11 unflipped
        outcomes.add((hflipped, vflipped))
    assert outcomes == {(False, False), (False, True), (True, False), (True, True)}


def test_none_is_identity_and_inputs_are_untouched():
    image, mask = window()
    keep = image.copy(), mask.copy()
    out_image, out_mask = create_augment(None)(image, mask)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    create_augment(recipe("augment_heavy_noise.yaml"), seed=1)(image, mask)
    np.testing.assert_array_equal(image, keep[0])
    np.testing.assert_array_equal(mask, keep[1])


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ({"transform": {"__class_fullname__": "Compose", "p": 1, "transforms": [
            {"__class_fullname__": "HorizontalFlip", "p": 0.5},
            {"__class_fullname__": "GaussNoise", "p": 0.5, "std_range": [0.5, 0.1]}]}},
         r"^augment\.transform\.transforms\[1\]: transform 'GaussNoise' does not load: std_range: "),
        ([{"__class_fullname__": "HorizontalFlp", "p": 0.5}],
         r"^augment\.transforms\[0\]: unknown albumentations transform 'HorizontalFlp' \(did you mean HorizontalFlip"),
        ([{"__class_fullname__": "GaussianBlur", "p": 0.5, "blur_limt": [3, 5]}],
         r"^augment\.transforms\[0\]: transform 'GaussianBlur': Argument\(s\) 'blur_limt' are not valid"),
        ([{"p": 0.5}], r"^augment\.transforms\[0\]: expected an albumentations transform mapping"),
        ({"__version__": "2.0.8", "transform": {"__class_fullname__": "Compose", "transforms": []}, "extra": 1},
         r"^augment: unknown key\(s\) \['extra'\]"),
    ],
)
def test_bad_pipelines_are_one_line_errors_naming_the_transform(spec, pattern):
    with pytest.raises(SegkitError, match=pattern) as info:
        create_augment(spec)
    assert "\n" not in str(info.value)


def test_channel_count_the_pipeline_cannot_handle_is_a_clear_error():
    aug = create_augment([{"__class_fullname__": "HueSaturationValue", "p": 1.0}], seed=0)
    image, mask = window(c=5)
    with pytest.raises(SegkitError, match="augment: the pipeline fails on a 5-channel float32 window: HueSaturationValue"):
        aug(image, mask)


def test_copy_paste_composes_with_the_pipeline():
    src, src_mask = window(40, 44)
    src_mask[:] = 0
    cv2.circle(src_mask, (20, 20), 6, 4, -1)
    bank = ObjectBank.from_samples([(src, src_mask)])
    image, mask = window()
    for order in ("before", "after"):
        runs = [create_augment(recipe("augment_baseline.yaml"), copy_paste={"p": 1, "count": 2, "order": order},
                               bank=bank, seed=3) for _ in range(2)]
        (i1, m1), (i2, m2) = runs[0](image, mask), runs[1](image, mask)
        assert (m1 == 4).any()
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(m1, m2)
    with pytest.raises(SegkitError, match="copy_paste: needs an object bank"):
        create_augment(None, copy_paste={"p": 1})
    with pytest.raises(SegkitError, match="copy_paste.order: expected 'before' or 'after'"):
        create_augment(None, copy_paste={"p": 1, "order": "middle"}, bank=bank)


class _Windows(torch.utils.data.Dataset):
    def __init__(self, aug):
        self.aug, self.image, self.mask = aug, *window()

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.from_numpy(self.aug(self.image, self.mask)[1].copy())


def test_dataloader_workers_draw_different_but_reproducible_augmentations():
    aug = create_augment([{"__class_fullname__": "HorizontalFlip", "p": 0.5},
                          {"__class_fullname__": "VerticalFlip", "p": 0.5}], seed=0)

    def run():
        torch.manual_seed(1)
        loader = torch.utils.data.DataLoader(_Windows(aug), batch_size=4, num_workers=2,
                                             multiprocessing_context="fork")
        return [batch for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 do not repeat each other


@pytest.mark.filterwarnings("ignore:HueSaturationValue. hue_shift and sat_shift are not applicable")
@pytest.mark.parametrize("name, channels", [("augment_baseline.yaml", 1), ("augment_baseline.yaml", 5),
                                            ("augment_heavy_noise.yaml", 1), ("augment_heavy_noise.yaml", 3)])
def test_recipes_run_on_the_channel_counts_they_document(name, channels):
    image, mask = window(c=channels)
    aug = create_augment(recipe(name), seed=0)
    for _ in range(4):
        out_image, out_mask = aug(image, mask)
        assert out_image.dtype == np.float32 and out_image.shape[-1] == channels
        assert out_mask.shape == out_image.shape[:2] and set(np.unique(out_mask)) <= {0, 1, 2, 3}


def test_normalized_input_warns_once_because_albumentations_clips_to_unit_range():
    image, mask = window()
    aug = create_augment(recipe("augment_baseline.yaml"), seed=0)
    with pytest.warns(UserWarning, match=r"window values span \[-2, 1\.4\].*before normalize"):
        aug(image * 4 - 2, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aug(image * 4 - 2, mask)  # once only
        create_augment(recipe("augment_baseline.yaml"), seed=0)(image, mask)  # [0, 1]: silent
