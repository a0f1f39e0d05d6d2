"""Instance targets end to end on the bundled nuclei sample: train (tiny), infer objects, bad inputs."""

from __future__ import annotations

import csv
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner

from segkit.cli import cli
from segkit.ground.geometry import Window
from segkit.io.labels.instances import open_instances
from segkit.io.images.raster import open_raster
from segkit.metrics.objects import match_objects

NUCLEI = Path(str(resources.files("segkit") / "sample" / "nuclei.tif"))


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def instance_run(module_tmp):
    root = module_tmp("instances")
    config = {
        "run": {"runs_dir": str(root / "runs"), "progress": False},
        "data": {"manifest": "sample-instances", "targets": "instances", "fov_px": 64, "size": 32,
                 "stats_windows": 8, "border_px": 2, "contact_px": 2},
        "model": {"encoder": "resnet18"},
        "train": {"epochs": 1, "windows_per_epoch": 8, "batch_size": 4, "target_weights": [1, 1, 0.5]},
        "infer": {"overlap_px": 16, "epochs": "best", "batch_size": 8, "tta": "none"},
    }
    (root / "inst.yaml").write_text(yaml.safe_dump(config))
    result = _cli("train", "--config", root / "inst.yaml", "--name", "inst")
    assert result.exit_code == 0, result.output
    assert "best val object f1" in result.output
    return root / "runs" / "inst"


def test_training_records_object_scores(instance_run):
    record = json.loads((instance_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_dice", "val_object_f1", "val_dsb", "loss_border_dice", "loss_contact_soft_bce"} <= set(record)
    assert 0 <= record["val_dsb"] <= record["val_object_f1"] <= 1
    saved = yaml.safe_load((instance_run / "config.yaml").read_text())
    assert saved["model"]["classes"] == 3 and saved["data"]["targets"] == "instances"


def test_infer_writes_one_object_per_feature_row_and_id(instance_run, tmp_path):
    out = {"instances": tmp_path / "ids.tif", "polygons": tmp_path / "objects.geojson", "rle": tmp_path / "sub.csv"}
    result = _cli("infer", "--run", instance_run, NUCLEI, "--instances", out["instances"], "--polygons",
                  out["polygons"], "--rle", out["rle"], "--rle-per-object",
                  "--rle-header", "ImageId,EncodedPixels", "--set", "infer.seed_threshold=0.5")
    assert result.exit_code == 0, result.output
    ids = tifffile.imread(out["instances"])
    assert ids.dtype == np.uint32 and ids.shape == (512, 512)
    n = len(np.unique(ids)) - 1
    assert n > 0
    features = json.loads(out["polygons"].read_text())["features"]
    assert len(features) == n
    assert {f["properties"]["objectType"] for f in features} == {"detection"}  # objects: detections by default
    assert sorted(f["properties"]["object_id"] for f in features) == sorted(np.unique(ids)[1:].tolist())
    with open(out["rle"]) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["ImageId", "EncodedPixels"] and len(rows) - 1 == n
    back = open_instances(out["rle"], open_raster(NUCLEI)).read_instances(Window(0, 0, 512, 512))
    match = match_objects(back, ids.astype(np.int64))
    assert len(match.pred_ids) == n and (match.iou == 1).sum() == n


def test_polygons_object_type_default_and_explicit(instance_run, tmp_path):
    """Instance runs write QuPath detections unless --object-type / infer.object_type says otherwise;
    runs without instance targets keep annotations."""
    from segkit.ground.config import load_config
    from segkit.infer.run import infer_settings

    def kind(*overrides):
        return infer_settings(load_config(None, list(overrides))).writing.object_type

    assert kind() == "annotation" and kind("infer.object_type=detection") == "detection"
    assert kind("data.targets=instances") == "detection"
    assert kind("data.targets=instances", "infer.object_type=annotation") == "annotation"
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, tifffile.imread(NUCLEI)[:64, :96])
    for n, (flags, expected) in enumerate((([], "detection"), (["--object-type", "annotation"], "annotation"),
                                           (["--set", "infer.object_type=annotation"], "annotation"))):
        out = tmp_path / f"{n}.geojson"
        result = _cli("infer", "--run", instance_run, crop, "--polygons", out, "--set", "infer.threshold=0.3", *flags)
        assert result.exit_code == 0, result.output
        features = json.loads(out.read_text())["features"]
        assert features and {f["properties"]["objectType"] for f in features} == {expected}


def _one_line_error(result, message):
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_instance_outputs_need_instance_targets(trained, project, tmp_path):
    result = _cli("infer", "--run", trained, project / "img0.tif", "--instances", tmp_path / "ids.tif")
    _one_line_error(result, "has no instance targets (train it with data.targets: instances)")
    result = _cli("infer", "--run", trained, project / "img0.tif", "--rle", tmp_path / "x.csv", "--rle-per-object")
    _one_line_error(result, "infer.rle_per_object: run")
    assert os.listdir(tmp_path) == []


def test_bad_targets_config_is_one_line(tmp_path):
    result = _cli("train", "--set", "data.targets=[body,edge]", "--set", f"run.runs_dir={tmp_path}")
    _one_line_error(result, "config key data.targets: unknown target 'edge'")
    assert os.listdir(tmp_path) == []


def test_evaluate_scores_watershed_objects_per_image(instance_run, tmp_path):
    """evaluate --run on an instance run: the validation rows' watershed objects against the true ids,
    object F1 and DSB per image next to the pixel scores, agreeing with what validation recorded."""
    result = _cli("evaluate", "--run", instance_run, "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "object_f1" in result.output and "dsb" in result.output
    scores = json.loads((tmp_path / "r.json").read_text())["evaluation"]
    image = scores["per_image"]["nuclei_val"]
    assert {"dice", "iou", "object_f1", "dsb"} <= set(image) and scores["classes"] == 1
    assert 0 <= image["dsb"] <= image["object_f1"] <= 1 and image["dice"] > 0
    assert scores["summary"]["object_tp"] + scores["summary"]["object_fn"] == 36  # true nuclei of rows 384-511
    record = [json.loads(line) for line in (instance_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert image["dsb"] == pytest.approx(record["val_dsb"], abs=1e-6)
    assert image["object_f1"] == pytest.approx(record["val_object_f1"], abs=1e-6)
    html = (tmp_path / "r.html").read_text()
    assert "<th>dsb</th>" in html and "nuclei_val" in html


def test_evaluate_search_tunes_the_watershed_seeds(instance_run, tmp_path):
    """evaluate --search on an instance run: seed thresholds searched on the validation fold for object
    F1, the best saved as the run's infer defaults (config.yaml) and recorded in run.json."""
    import re
    import shutil

    run = tmp_path / "inst"
    shutil.copytree(instance_run, run)  # --search rewrites config.yaml; the module's run stays as trained
    result = _cli("evaluate", "--run", run, "--search", "--out", tmp_path / "s.html", "--worst", 1)
    assert result.exit_code == 0, result.output
    plain = float(re.search(r"run inst: .*?object_f1 (\d\.\d+)", result.output).group(1))
    found = re.search(r"search: object_f1 (\d\.\d+) -> (\d\.\d+), dsb (\d\.\d+) -> (\d\.\d+)", result.output)
    assert found, result.output
    before, after = float(found.group(1)), float(found.group(2))
    assert before == pytest.approx(plain, abs=1e-4)  # whole-region watershed = the evaluation's objects
    assert after >= before
    record = json.loads((run / "run.json").read_text())["infer_search"]
    infer = yaml.safe_load((run / "config.yaml").read_text())["infer"]
    for key in ("threshold", "seed_threshold", "seed_border"):
        assert infer[key] == record["after"][key]
    assert record["after"]["object_f1"] == pytest.approx(after, abs=1e-4)
    assert json.loads((tmp_path / "s.json").read_text())["search"]["seed_threshold"] == infer["seed_threshold"]
    # infer's streaming watershed with the saved defaults scores what the search found
    result = _cli("evaluate", "--run", run, "--out", tmp_path / "again.html")
    assert result.exit_code == 0, result.output
    again = float(re.search(r"run inst: .*?object_f1 (\d\.\d+)", result.output).group(1))
    assert again == pytest.approx(after, abs=1e-4)


def test_predict_image_on_an_instance_run_applies_a_sigmoid_per_target(instance_run, tmp_path):
    """The Python API and `segkit infer` share one activation rule: body, border and contact are
    independent maps (a sigmoid each), not classes competing in a softmax that sums to 1."""
    from segkit import predict_image

    probs = predict_image(NUCLEI, instance_run, tta="none", overlap_px=16, device="cpu")
    assert probs.shape == (3, 512, 512)
    assert not np.allclose(probs.sum(axis=0), 1.0, atol=1e-3)  # a softmax across the targets sums to 1
    result = _cli("infer", "--run", instance_run, NUCLEI, "--probs", tmp_path / "p.tif", "--instances",
                  tmp_path / "ids.tif", "--tta", "none", "--overlap", 16)
    assert result.exit_code == 0, result.output
    body = tifffile.imread(tmp_path / "p.tif")  # the body probability as uint8 0..255
    assert body.shape == (512, 512)
    assert np.abs(body.astype(np.float32) / 255 - probs[0]).max() <= 1 / 255 + 1e-4
