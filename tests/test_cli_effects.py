"""Each `segkit infer` post-processing and averaging option changes the output the way its help says.

All through the real CLI on the session's `learned` run (a tiny disc model with validation Dice
~0.8), so the outputs have objects, small specks and edges to act on. Probabilities are written
as uint8 (0..255): averages are exact up to one step of that rounding.
"""

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import HEIGHT, WIDTH
from scipy import ndimage

from segkit.cli import cli

STEP = 1  # one uint8 step of a written probability


def infer(run_dirs, image, out, *extra):
    """(mask, probs) of one image: --mask and --probs written by `segkit infer`, read back."""
    mask, probs = out / "mask.tif", out / "probs.tif"
    runs = [arg for run_dir in run_dirs for arg in ("-r", str(run_dir))]
    result = CliRunner().invoke(cli, ["infer", *runs, "--mask", str(mask), "--probs", str(probs), "--overwrite",
                                      *map(str, extra), str(image)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tifffile.imread(mask), tifffile.imread(probs).astype(np.int16)


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def base(learned, module_tmp):
    """The validation image's plain prediction (no TTA, no post-processing) and its label."""
    project = learned.parent.parent
    out = module_tmp("effects")
    mask, probs = infer([learned], project / "img1.tif", out, "--tta", "none")
    return {"mask": mask, "probs": probs, "truth": tifffile.imread(project / "img1_mask.tif"), "out": out,
            "image": project / "img1.tif"}


def test_min_object_px_removes_exactly_the_smaller_objects(learned, base):
    labels, _ = ndimage.label(base["mask"])  # 4-connected, as segkit's objects
    sizes = np.bincount(labels.ravel())
    cut = 50
    small = [k for k in range(1, len(sizes)) if sizes[k] < cut]
    assert small and len(small) < len(sizes) - 1  # some specks to remove, some objects to keep
    expected = np.where(np.isin(labels, small), 0, base["mask"])
    mask, _ = infer([learned], base["image"], base["out"], "--tta", "none", "--set", f"infer.min_object_px={cut}")
    np.testing.assert_array_equal(mask, expected)


def test_fill_holes_fills_the_hole_of_a_ring(learned, tmp_path):
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    distance = (yy - 45) ** 2 + (xx - 60) ** 2
    ring = (distance <= 18**2) & (distance > 9**2)  # a bright ring around a dark centre wider than any training disc
    image = np.random.default_rng(5).normal(60, 12, (HEIGHT, WIDTH)) + 120 * ring
    tifffile.imwrite(tmp_path / "ring.tif", np.clip(image, 0, 255).astype(np.uint8))
    plain, _ = infer([learned], tmp_path / "ring.tif", tmp_path, "--tta", "none")
    filled = ndimage.binary_fill_holes(plain).astype(np.uint8)
    assert filled.sum() > plain.sum() + 50  # the prediction has the ring's hole
    mask, _ = infer([learned], tmp_path / "ring.tif", tmp_path, "--tta", "none", "--set", "infer.fill_holes=true")
    np.testing.assert_array_equal(mask, filled)


def test_crf_snaps_the_mask_to_the_image_edges(learned, base):
    pytest.importorskip("pydensecrf", reason="the crf extra (pip install 'segkit[crf]') is optional")
    mask, _ = infer([learned], base["image"], base["out"], "--tta", "none", "--crf")
    # bright discs on a dark background: the CRF's colour term pulls the mask onto them (~0.87 -> ~1.0)
    assert dice(mask, base["truth"]) > dice(base["mask"], base["truth"]) + 0.05


def test_tta_weights_weigh_the_views(learned, base):
    _, flipped = infer([learned], base["image"], base["out"], "--tta", "hflip:1")
    plain = base["probs"]
    assert np.abs(flipped - plain).max() > 20  # the views disagree, so weights can show
    # "identity:4,hflip:1": weights are normalised (0.8, 0.2)
    for spec, w in (("identity:1,hflip:1", 0.5), ("identity:4,hflip:1", 0.8)):
        _, mixed = infer([learned], base["image"], base["out"], "--tta", spec)
        assert np.abs(mixed - (w * plain + (1 - w) * flipped)).max() <= STEP, spec


def test_ensemble_of_two_different_runs_weighs_each_run_equally(learned, base):
    """`-r A -r B`: each run weighs 1/2 whatever its number of checkpoints (here 2 and 1). B is another
    model on the same preprocessing (same seed, so the same normalisation statistics)."""
    project = learned.parent.parent
    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "other",
                                      "--epochs", "1", "--set", "train.lr=0.01"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    other = learned.parent / "other"
    out, image = base["out"], base["image"]
    _, a = infer([learned], image, out, "--tta", "none", "--epochs", "last:2")  # two checkpoints
    _, b = infer([other], image, out, "--tta", "none", "--epochs", "last:2")  # one
    assert np.abs(a - b).max() > 20
    _, both = infer([learned, other], image, out, "--tta", "none", "--epochs", "last:2")
    assert np.abs(both - (a + b) / 2).max() <= STEP
    assert np.abs(both - (2 * a + b) / 3).max() > 3 * STEP  # not one weight per checkpoint
