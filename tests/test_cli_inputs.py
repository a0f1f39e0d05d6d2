"""Issue 4 through the real CLI: multi-contrast channels on int16 CT, stats, preview, copy-paste."""

import json

import cv2
import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner

from segkit.cli import cli


@pytest.fixture(scope="module")
def ct_project(module_tmp):
    """An int16 'CT slice' in Hounsfield units: air -1000, soft tissue 40, lung -700, bone 700."""
    root = module_tmp("ct")
    rng = np.random.default_rng(3)
    height, width = 80, 101
    hu = np.full((height, width), 40, np.int16)
    hu[:, :6] = -1000
    mask = np.zeros((height, width), np.uint8)
    for r, c in [(20, 25), (55, 70), (30, 80), (60, 20)]:
        cv2.circle(mask, (c, r), 9, 1, -1)
    hu[mask == 1] = 700
    hu[10:30, 40:60] = -700
    hu = (hu + rng.normal(0, 15, hu.shape)).astype(np.int16)
    tifffile.imwrite(root / "ct.tif", hu)
    tifffile.imwrite(root / "ct_mask.tif", mask)
    (root / "manifest.csv").write_text(
        "id,image,label,region,fold\nct_a,ct.tif,ct_mask.tif,\"0,0,50,101\",1\nct_b,ct.tif,ct_mask.tif,\"50,0,30,101\",0\n"
    )
    config = {
        "run": {"runs_dir": str(root / "runs"), "progress": False},
        "data": {
            "manifest": str(root / "manifest.csv"), "size": 32, "fov_px": 32, "stats_windows": 4,
            "channels": [{"band": 0, "preset": "lung"}, {"band": 0, "preset": "mediastinum"},
                         {"band": 0, "preset": "bone"}],
        },
        "train": {"epochs": 1, "windows_per_epoch": 8, "batch_size": 4},
        "infer": {"overlap_px": 8, "batch_size": 4},
    }
    (root / "ct.yaml").write_text(yaml.safe_dump(config))
    return root


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_three_window_ct_training_run(ct_project):
    invoke("train", "--config", ct_project / "ct.yaml", "--name", "ct3")
    run_dir = ct_project / "runs" / "ct3"
    spec = json.loads((run_dir / "preprocess.json").read_text())
    assert [c["preset"] for c in spec["channels"]] == ["lung", "mediastinum", "bone"]
    assert json.loads((run_dir / "run.json").read_text())["in_channels"] == 3
    out = ct_project / "ct.csv"
    invoke("infer", "--run", run_dir, "--rle", out, ct_project / "ct.tif")
    assert out.read_text().startswith("id,rle\nct,")


def test_stats_prints_one_line_per_channel(ct_project, tmp_path):
    result = invoke("stats", "--config", ct_project / "ct.yaml", "--out", tmp_path / "stats.json")
    lines = [line for line in result.output.splitlines() if line.startswith("channel")]
    assert len(lines) == 3
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert len(saved["mean"]) == 3 and all(0 <= m <= 1 for m in saved["mean"])
    reuse = next(line for line in result.output.splitlines() if line.startswith("to reuse:"))
    assert "data.mean=[" in reuse and "data.std=[" in reuse


def test_given_mean_and_std_are_used_as_is(ct_project):
    invoke("train", "--config", ct_project / "ct.yaml", "--name", "ct_given", "--set", "data.mean=[0.5, 0.5, 0.25]",
           "--set", "data.std=[0.2, 0.2, 0.1]")
    spec = json.loads((ct_project / "runs" / "ct_given" / "preprocess.json").read_text())
    assert spec["mean"] == [0.5, 0.5, 0.25] and spec["std"] == [0.2, 0.2, 0.1]
    result = CliRunner().invoke(cli, ["train", "--config", str(ct_project / "ct.yaml"), "--set", "data.mean=[0.5]",
                                      "--set", "data.std=[0.2]"])
    assert result.exit_code != 0 and "data.mean: 1 values for 3 channel(s)" in result.output


def test_preview_writes_a_grid_with_copy_paste(ct_project, tmp_path):
    out = tmp_path / "preview.png"
    invoke("preview", "--config", ct_project / "ct.yaml", "--out", out, "--count", 6, "--columns", 3,
           "--set", "data.copy_paste={p: 1.0, count: [1, 2], min_px: 8}")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 32 * 2 and image.shape[1] > 32 * 3


def test_bad_channel_spec_is_a_one_line_error(ct_project):
    result = CliRunner().invoke(cli, ["train", "--config", str(ct_project / "ct.yaml"),
                                      "--set", "data.channels=[{band: 0, preset: lungs}]"])
    assert result.exit_code != 0 and "lungs" in result.output and "Traceback" not in result.output


def test_training_with_copy_paste_and_an_augment_recipe(ct_project):
    invoke("train", "--config", ct_project / "ct.yaml", "--name", "ct_cp",
           "--set", "data.copy_paste={p: 1.0, count: [1, 2], min_px: 8}",
           "--set", "data.augment={transform: {__class_fullname__: HorizontalFlip, p: 0.5}}")
    records = (ct_project / "runs" / "ct_cp" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 1 and np.isfinite(json.loads(records[0])["train_loss"])
