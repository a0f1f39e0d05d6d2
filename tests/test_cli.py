"""The real `segkit` commands on a tiny dataset written to disk (seconds each)."""

import csv
import json

import numpy as np
import tifffile
import yaml
from click.testing import CliRunner
from conftest import HEIGHT, WIDTH

from segkit.cli import cli
from segkit.io.rle import decode


def run(*args, expect=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def test_train_writes_a_complete_run_directory(trained):
    assert (trained / "config.yaml").exists() and (trained / "preprocess.json").exists()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["val_dice"] <= 1.0 and np.isfinite(r["train_loss"]) for r in records)
    assert sorted(p.name for p in (trained / "checkpoints").glob("*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]
    info = json.loads((trained / "run.json").read_text())
    assert info["status"] == "finished" and info["command"] == "train" and info["parent"] is None
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["data"]["fov_px"] == 48 and saved["data"]["size"] == 32 and saved["run"]["name"] == "stage1"
    assert list((trained / "plots").glob("*.png"))


def test_finetune_keeps_the_field_of_view_and_records_its_parent(project, trained):
    result = run("finetune", "--from", trained, "--size", 48, "--epochs", 1, "--name", "stage2",
                 "--runs-dir", project / "runs")
    child = project / "runs" / "stage2"
    saved = yaml.safe_load((child / "config.yaml").read_text())
    assert saved["data"]["fov_px"] == 48 and saved["data"]["size"] == 48
    assert json.loads((child / "run.json").read_text())["parent"] == str(trained)
    assert json.loads((child / "preprocess.json").read_text()) == json.loads((trained / "preprocess.json").read_text())
    assert "val dice" in result.output


def test_infer_writes_rle_of_every_image_and_refuses_to_overwrite(project, trained):
    out = project / "sub.csv"
    result = run("infer", "--run", trained, "--runs-dir", project / "runs", "--rle", out,
                 project / "img0.tif", project / "img1.tif")
    assert "epoch_0001.pt, epoch_0002.pt" in result.output
    with open(out) as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "rle"] and [r[0] for r in rows[1:]] == ["img0", "img1"]
    # what the RLE holds is checked against the --mask TIFF below
    before = out.read_bytes()
    result = run("infer", "--run", trained, "--rle", out, project / "img0.tif", expect=1)
    assert "exists (use --overwrite)" in result.output and out.read_bytes() == before


def test_infer_mask_tiff_matches_the_rle(project, trained):
    mask_path, rle_path = project / "m_{id}.tif", project / "one.csv"
    run("infer", "--run", trained, "--rle", rle_path, "--mask", mask_path, "--tta", "none", project / "img1.tif")
    mask = tifffile.imread(project / "m_img1.tif")
    rle = list(csv.reader(open(rle_path)))[1][1]
    assert np.array_equal(decode(rle, (HEIGHT, WIDTH)), (mask > 0).astype(np.uint8))


# Mistakes (unknown keys, runs, manifests; resuming a finished run) are rows of tests/test_bad_inputs.py.


def test_every_option_of_every_command_is_explained():
    assert run("--help").output.count("segkit") >= 3
    for name, command in cli.commands.items():
        run(name, "--help")
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help text"


def test_infer_polygons_and_probs(project, trained):
    """The formats; the effects of --crf, min_object_px, fill_holes and TTA: tests/test_cli_effects.py."""
    polygons, probs = project / "p_{id}.geojson", project / "pr_{id}.tif"
    run("infer", "--run", trained, "--polygons", polygons, "--probs", probs, project / "img0.tif")
    collection = json.loads((project / "p_img0.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert all(f["properties"]["class"] == 1 for f in collection["features"])
    assert tifffile.imread(project / "pr_img0.tif").shape == (HEIGHT, WIDTH)


def test_infer_with_several_images_needs_id_in_per_image_paths(project, trained):
    result = run("infer", "--run", trained, "--mask", project / "same.tif",
                 project / "img0.tif", project / "img1.tif", expect=1)
    assert "several images need '{id}'" in result.output
