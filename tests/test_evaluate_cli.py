"""`segkit evaluate` end to end: a run's validation fold through infer's predictor, files, --search, bad inputs."""

import json
import re
import shutil

import pytest
import yaml
from click.testing import CliRunner

from segkit.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_copy(trained, module_tmp):
    """The shared trained run copied aside (--search rewrites its config.yaml)."""
    path = module_tmp("evaluate_run") / "stage1"
    shutil.copytree(trained, path)
    return path


def test_run_is_scored_like_its_infer_output(run_copy, project, tmp_path):
    result = invoke("evaluate", "--run", run_copy, "--out", tmp_path / "run.html", "--worst", 3)
    assert result.exit_code == 0, result.output
    assert re.search(r"run stage1: 1 image\(s\), 1 item\(s\): dice \d\.\d{4}", result.output)
    text = (tmp_path / "run.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 1  # histograms + the one val image
    by_run = json.loads((tmp_path / "run.json").read_text())["evaluation"]["per_image"]
    # the same images through `segkit infer --mask` and scored as files give the same numbers
    (tmp_path / "masks").mkdir()
    result = invoke("infer", "-r", run_copy, "--mask", tmp_path / "masks" / "{id}.tif")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", "--pred", tmp_path / "masks", "--config", project / "tiny.yaml",
                    "--out", tmp_path / "files.html")
    assert result.exit_code == 0, result.output
    by_files = json.loads((tmp_path / "files.json").read_text())["evaluation"]["per_image"]
    assert set(by_files) == {"img0", "img1"} and set(by_run) == {"img1"}
    assert by_files["img1"] == pytest.approx(by_run["img1"])


def test_search_saves_infer_defaults(run_copy, tmp_path):
    result = invoke("evaluate", "--run", run_copy, "--search", "--out", tmp_path / "s.html", "--worst", 1)
    assert result.exit_code == 0, result.output
    plain = float(re.search(r"run stage1: .*?dice (\d\.\d+)", result.output).group(1))
    found = re.search(r"search: dice (\d\.\d+) -> (\d\.\d+)", result.output)
    before, after = float(found.group(1)), float(found.group(2))
    assert before == pytest.approx(plain, abs=1e-4)  # the views recombined = the run's own prediction
    assert after >= before
    record = json.loads((run_copy / "run.json").read_text())["infer_search"]
    infer = yaml.safe_load((run_copy / "config.yaml").read_text())["infer"]
    assert infer["threshold"] == record["after"]["threshold"]
    assert infer["min_object_px"] == record["after"]["min_object_px"]
    assert infer["tta"] == record["after"]["tta"]


@pytest.mark.parametrize("args, message", [
    ([], "give either --run RUN or --pred FILE"),
    (["--pred", "{tmp}/missing.csv"], "missing.csv: --pred not found"),
    (["--pred", "{tmp}/sub.csv", "--search"], "--search: needs --run RUN"),
    (["--run", "nope"], "nope: no such run"),
    (["--pred", "{tmp}/sub.csv", "--out", "{tmp}/exists.html"], "exists.html: exists (use --overwrite)"),
])
def test_bad_inputs_are_one_line(args, message, tmp_path, project):
    (tmp_path / "sub.csv").write_text("id,rle\nimg0,1 3\n")
    (tmp_path / "exists.html").write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("evaluate", "--config", project / "tiny.yaml", "--runs-dir", tmp_path,
                    *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "exists.html").read_text() == "keep"


def test_vs_another_run_finds_a_planted_change(trained, tmp_path):
    """`evaluate --run NEW --vs OLD` with two runs: OLD is the same run with its small-object filter planted so
    large that it writes empty masks, so the one validation image must come out better in NEW."""
    new, old = tmp_path / "runs" / "new", tmp_path / "runs" / "old"
    shutil.copytree(trained, new)
    shutil.copytree(trained, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["infer"]["min_object_px"] = 10**6
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    result = invoke("evaluate", "--run", new, "--vs", old, "--out", tmp_path / "vs.html", "--worst", 1)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "vs.json").read_text())["vs"]["images"]
    assert row["id"] == "img1" and row["old"] == 0.0 and row["new"] > 0 and row["delta"] == row["new"]
    assert "vs run old: 1 common image(s), 1 better, 0 worse" in result.output
    text = (tmp_path / "vs.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 1 + 1 + 1  # histograms, worst, 1 change


def test_geojson_predictions_score_like_the_masks_they_outline(trained, project, tmp_path):
    """`infer --polygons 'out/{id}.geojson'` and `infer --mask` of one run, both scored with `evaluate --pred`:
    GeoJSON predictions are read (rasterised) and give the masks' scores, up to the polygons' pixel edges."""
    for flag, name in (("--mask", "{id}.tif"), ("--polygons", "{id}.geojson")):
        folder = tmp_path / flag.strip("-")
        folder.mkdir()
        result = invoke("infer", "-r", trained, flag, folder / name)
        assert result.exit_code == 0, result.output
        result = invoke("evaluate", "--pred", folder, "--config", project / "tiny.yaml",
                        "--out", tmp_path / f"{folder.name}.html")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "polygons").iterdir()) == ["img0.geojson", "img1.geojson"]
    masks, polygons = (json.loads((tmp_path / f"{n}.json").read_text())["evaluation"]["per_image"]
                       for n in ("mask", "polygons"))
    assert set(masks) == set(polygons) == {"img0", "img1"}
    for image_id in masks:
        assert polygons[image_id]["dice"] == pytest.approx(masks[image_id]["dice"], abs=0.03)
        assert polygons[image_id]["dice"] > 0


@pytest.fixture
def own_run(trained, tmp_path):
    """The shared trained run with its own settings (run_copy's are rewritten by --search)."""
    path = tmp_path / "runs" / "stage1"
    shutil.copytree(trained, path)
    return path


def test_set_changes_what_a_run_is_scored_with_like_infer(own_run, project, tmp_path):
    """`evaluate --run R --set infer.threshold=T` scores R as `infer --set infer.threshold=T` predicts it,
    prints the settings it used, and a threshold of 0.99 changes the scores."""
    by_run = {}
    for threshold in ("0.5", "0.99"):
        result = invoke("evaluate", "--run", own_run, "--set", f"infer.threshold={threshold}",
                        "--out", tmp_path / f"run{threshold}.html", "--worst", 1)
        assert result.exit_code == 0, result.output
        assert re.search(rf"run stage1 \(infer.threshold={threshold}\): checkpoints \[epoch_0001.pt, epoch_0002.pt\] "
                         rf"\(infer.epochs last:2\), tta hflip, threshold {threshold}, min_object_px 0", result.output)
        by_run[threshold] = json.loads((tmp_path / f"run{threshold}.json").read_text())["evaluation"]["per_image"]
        masks = tmp_path / f"masks{threshold}"
        result = invoke("infer", "-r", own_run, "--set", f"infer.threshold={threshold}", "--mask", masks / "{id}.tif")
        assert result.exit_code == 0, result.output  # the folder is made for the masks
        result = invoke("evaluate", "--pred", masks, "--config", project / "tiny.yaml",
                        "--out", tmp_path / f"files{threshold}.html")
        assert result.exit_code == 0, result.output
        by_files = json.loads((tmp_path / f"files{threshold}.json").read_text())["evaluation"]["per_image"]
        assert by_files["img1"] == pytest.approx(by_run[threshold]["img1"])
    assert by_run["0.99"]["img1"]["dice"] != pytest.approx(by_run["0.5"]["img1"]["dice"])
    assert by_run["0.99"]["img1"]["recall"] < by_run["0.5"]["img1"]["recall"]
    # other infer keys too: one checkpoint, no TTA
    result = invoke("evaluate", "--run", own_run, "--set", "infer.epochs=best", "--set", "infer.tta=none",
                    "--out", tmp_path / "best.html", "--worst", 1)
    assert result.exit_code == 0, result.output
    assert re.search(r"checkpoints \[epoch_000\d.pt\] \(infer.epochs best\), tta none", result.output)


@pytest.mark.parametrize("args, message", [
    (["--run", "{run}", "--set", "train.lr=1"],
     "--set train.lr: `segkit evaluate --run` does not read it (it reads infer.*, run.*, train.amp)"),
    (["--run", "{run}", "--set", "data.size=64"], "--set data.size: `segkit evaluate --run` does not read it"),
    (["--pred", "{tmp}/sub.csv", "--set", "infer.threshold=0.9"], "--set infer.threshold: `segkit evaluate` does not"),
    (["--run", "{run}", "--set", "infer.threshold=2"], "config key infer.threshold"),
])
def test_keys_evaluate_does_not_read_are_refused(args, message, trained, tmp_path, project):
    (tmp_path / "sub.csv").write_text("id,rle\nimg0,1 3\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("evaluate", "--config", project / "tiny.yaml",
                    *[a.format(tmp=tmp_path, run=trained) for a in args], "--out", tmp_path / "r.html")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_vs_the_same_run_under_other_settings_names_both_sides(own_run, tmp_path):
    result = invoke("evaluate", "--run", own_run, "--set", "infer.threshold=0.99", "--vs", own_run,
                    "--out", tmp_path / "vs.html", "--worst", 1)
    assert result.exit_code == 0, result.output
    assert "run stage1 (infer.threshold=0.99): checkpoints" in result.output
    assert "run stage1: checkpoints" in result.output  # the other side keeps the run's own settings
    assert re.search(r"vs run stage1: 1 common image\(s\), 0 better, 1 worse; mean dice \d\.\d{4} "
                     r"\(run stage1 \(infer.threshold=0.99\)\) vs \d\.\d{4} \(run stage1\)", result.output)
    text = (tmp_path / "vs.html").read_text()
    assert "before" not in text and "<th>run stage1 (infer.threshold=0.99)</th><th>run stage1</th>" in text
