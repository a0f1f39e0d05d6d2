"""Shared test set-up: offline hubs, quiet albumentations, headless matplotlib, a tiny trained project."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Thumbnail grids are cached on disk; tests keep theirs out of the user's ~/.cache, and a run removes its own
# (child processes inherit the variable and never create one).
if "SEGKIT_CACHE_DIR" not in os.environ:
    os.environ["SEGKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="segkit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SEGKIT_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


# --- a tiny trained project shared by the CLI tests (trained once per session) ---

import csv  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

HEIGHT, WIDTH = 90, 133  # deliberately not multiples of the tile


def _discs(rng, height, width, count):
    """A noisy grey image with bright discs and the matching 0/1 mask."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        r, c, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 9)
        mask[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = 1
    image = rng.normal(60, 12, (height, width)) + 120 * mask
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_tiny_project(root, *, data=None, train=None, infer=None):
    """Two noisy disc images with masks (fold 0 trains, fold 1 validates), manifest.csv and tiny.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(2):
        image, mask = _discs(rng, HEIGHT, WIDTH, 12)
        tifffile.imwrite(root / f"img{index}.tif", image, tile=(32, 32), compression="zlib")
        tifffile.imwrite(root / f"img{index}_mask.tif", mask)
        rows.append({"id": f"img{index}", "image": f"img{index}.tif", "label": f"img{index}_mask.tif", "fold": index})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = {
        "run": {"runs_dir": str(root / "runs"), "progress": False},
        "data": {"manifest": str(root / "manifest.csv"), "fov_px": 48, "size": 32, "val_fold": 1, "stats_windows": 8,
                 **(data or {})},
        "model": {"encoder": "resnet18"},
        "train": {"epochs": 2, "windows_per_epoch": 8, "batch_size": 4, **(train or {})},
        "infer": {"overlap_px": 16, "epochs": "last:2", "batch_size": 4, **(infer or {})},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """mktemp for module-scoped fixtures; the folders go when the module ends with no new failure. Trained runs
    hold checkpoints of 60 to 290 MB, and a suite that kept them all wrote 16 GB to /tmp (a CI run ran out)."""
    made, failed_before = [], request.session.testsfailed

    def mktemp(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    return write_tiny_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="session")
def trained(project):
    from segkit.cli import cli

    result = CliRunner().invoke(cli, ["train", "--config", str(project / "tiny.yaml"), "--name", "stage1"])
    assert result.exit_code == 0, result.output
    return project / "runs" / "stage1"




@pytest.fixture(scope="session")
def learned(tmp_path_factory):
    """A 5-epoch seeded run ("parent") of a tiny disc project (fp32, no TTA) that learns: validation
    Dice ~0.8 where chance is ~0.2. A few seconds on one core; tests that check effects use it."""
    from segkit.cli import cli

    root = write_tiny_project(tmp_path_factory.mktemp("learn"), train={"amp": False, "epochs": 5},
                              infer={"tta": "none", "epochs": "last:1"})
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "parent"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "parent"


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty thumbnail-grid cache of the test's own (memory and disk)."""
    from segkit.data.grids import clear_memory_cache

    monkeypatch.setenv("SEGKIT_CACHE_DIR", str(tmp_path / "cache"))
    clear_memory_cache()
    yield
    clear_memory_cache()


def stop_training_at_epoch(monkeypatch, epoch):
    """Ctrl-C when ``epoch`` starts: segkit.train.fit's train_one_epoch raises KeyboardInterrupt from
    then on. Returns a function that puts the real one back (to resume in the same test)."""
    import segkit.train.fit as fit_module

    real = fit_module.train_one_epoch

    def interrupted(model, loader, *args, **kwargs):
        if loader.dataset.epoch >= epoch:
            raise KeyboardInterrupt
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", interrupted)
    return lambda: monkeypatch.setattr(fit_module, "train_one_epoch", real)


def row_strips(array, heights):
    """(row0, rows) strips of ``array`` along axis -2, heights cycling through ``heights``."""
    rows, row0, i = array.shape[-2], 0, 0
    while row0 < rows:
        h = heights[i % len(heights)]
        yield row0, array[..., row0:row0 + h, :]
        row0 += h
        i += 1


# --- a tiny digits classification dataset (tools/make_digits.py), made once per session ---


def make_digits(root, **options):
    """tools/make_digits.py's make_digits() into ``root`` (the tool is a script, not a module)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_digits", Path(__file__).resolve().parents[1] / "tools" / "make_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_digits(root, **options)
    return root


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """8 real digits per class at 16x16 px: train.csv (60 rows), test.csv, test_corrupted.csv, train_noisy.csv."""
    pytest.importorskip("sklearn")
    return make_digits(tmp_path_factory.mktemp("digits"), per_class=8, scale=2, test_fraction=0.25, seed=0)


def write_digits_cls_config(digits, root, infer=None):
    """root/cls.yaml: a one-epoch cls run of tu-resnet10t on the digits fixture (runs in root/runs)."""
    config = {
        "task": "cls",
        "run": {"runs_dir": str(root / "runs"), "progress": False},
        "data": {"manifest": str(digits / "train.csv"), "size": 16, "folds": 4, "fold_method": "stratified",
                 "stats_windows": 8},
        "model": {"encoder": "tu-resnet10t"},
        "train": {"epochs": 1, "batch_size": 8, "amp": False},
        "infer": {"tta": "none", "epochs": "last:1", **(infer or {})},
    }
    (root / "cls.yaml").write_text(yaml.safe_dump(config))
    return root / "cls.yaml"
