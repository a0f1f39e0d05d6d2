"""`--task cls` end to end through the CLI on a small real digits fixture: train, finetune, infer (--csv,
--probs, --calibrate), oof, clean; and the bad inputs of the issue as one-line errors that write nothing."""

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from conftest import stop_training_at_epoch
from segkit.cli import cli

NAMES = [str(i) for i in range(10)]


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _ok(*args):
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def cls_project(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    config = {
        "task": "cls",
        "run": {"runs_dir": str(root / "runs"), "progress": False},
        "data": {"manifest": str(digits / "train.csv"), "class_names": NAMES, "size": 16, "folds": 4,
                 "fold_method": "stratified", "stats_windows": 8},
        "model": {"encoder": "tu-resnet10t"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.003, "amp": False},
        "infer": {"tta": "none", "epochs": "last:2", "batch_size": 32},
    }
    (root / "cls.yaml").write_text(yaml.safe_dump(config))
    _ok("train", "--config", root / "cls.yaml", "--name", "c1")
    return root


def test_train_records_classes_macro_f1_and_a_confusion_png_per_epoch(cls_project):
    run = cls_project / "runs" / "c1"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["class_names"] == NAMES and saved["model"]["classes"] == 10
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"val_f1"' in line and '"val_accuracy"' in line for line in lines)
    assert sorted(p.name for p in (run / "plots").glob("confusion_*.png")) == ["confusion_epoch_0001.png",
                                                                               "confusion_epoch_0002.png"]


def test_finetune_infer_csv_probs_and_calibrate(cls_project, digits, tmp_path):
    runs = cls_project / "runs"
    _ok("finetune", "--task", "cls", "--from", "c1", "--size", "24", "--epochs", "1", "--runs-dir", runs,
        "--name", "c2")
    images = sorted((digits / "test").glob("*/*.png"))
    out = _ok("infer", "--task", "cls", *images, "--run", "c2", "--runs-dir", runs, "--csv", tmp_path / "p.csv")
    assert "classified 20 image(s)" in out
    rows = _rows(tmp_path / "p.csv")
    assert [r["id"] for r in rows] == [p.stem for p in images] and {r["label"] for r in rows} <= set(NAMES)
    assert list(rows[0]) == ["id", "label"]
    _ok("infer", *images, "--run", "c2", "--runs-dir", runs, "--csv", tmp_path / "q.csv", "--probs", "--calibrate",
        "--tta", "hflip")
    table = _rows(tmp_path / "q.csv")
    probs = np.array([[float(r[n]) for n in NAMES] for r in table])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert [r["label"] for r in table] == [NAMES[i] for i in probs.argmax(1)]
    calibration = yaml.safe_load((runs / "c2" / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["tta"] == "hflip" and calibration["nll_after"] <= \
        calibration["nll_before"] + 1e-9


def test_two_runs_with_d4_views_average_the_runs_probabilities(cls_project, digits, tmp_path):
    """A run ensemble is the mean of its runs' probabilities (each run under its own 8 d4 views)."""
    runs = cls_project / "runs"
    _ok("finetune", "--task", "cls", "--from", "c1", "--size", "16", "--epochs", "1", "--lr", "0.01",
        "--runs-dir", runs, "--name", "ens_b")
    images = sorted((digits / "test").glob("*/*.png"))
    probs = {}
    for name, chosen in (("a", ["c1"]), ("b", ["ens_b"]), ("ab", ["c1", "ens_b"])):
        _ok("infer", *images, *[x for run in chosen for x in ("--run", run)], "--runs-dir", runs, "--csv",
            tmp_path / f"{name}.csv", "--probs", "--tta", "d4")
        probs[name] = np.array([[float(r[n]) for n in NAMES] for r in _rows(tmp_path / f"{name}.csv")])
    assert not np.allclose(probs["a"], probs["b"], atol=1e-3)  # two different models
    _ok("infer", *images, "--run", "c1", "--runs-dir", runs, "--csv", tmp_path / "plain.csv", "--probs")
    plain = np.array([[float(r[n]) for n in NAMES] for r in _rows(tmp_path / "plain.csv")])
    assert not np.allclose(plain, probs["a"], atol=1e-4)  # the d4 views were used
    assert np.allclose(probs["ab"], (probs["a"] + probs["b"]) / 2, atol=1e-5)


def test_cls_resumes_exactly_with_ema_and_accumulation_then_infers_a_soup(cls_project, digits, tmp_path, monkeypatch):
    """The seg engine's features on a classifier, no second code path: EMA + gradient accumulation + the
    weight average of both epochs, Ctrl-C in epoch 2 and `--resume` give the uninterrupted run's checkpoint
    and average bit for bit, the average validated by macro F1; `infer --soup` reads both epochs."""
    import json

    import torch

    runs = tmp_path / "runs"
    common = ("--config", cls_project / "cls.yaml", "--runs-dir", runs, "--set", "train.ema=0.9", "--set",
              "train.accumulate=2", "--set", "train.swa_epochs=2")
    summary = _ok("train", *common, "--name", "straight").splitlines()[-1]
    assert " best val f1 " in summary and "val dice" not in summary  # a cls run names its own metric
    restore = stop_training_at_epoch(monkeypatch, 2)
    assert _run("train", *common, "--name", "cut").exit_code == 130
    restore()
    assert "resuming" in _ok("train", "--resume", runs / "cut")
    a, b = (torch.load(runs / n / "checkpoints" / "epoch_0002.pt", weights_only=True) for n in ("cut", "straight"))
    for key in ("model", "train_model"):  # EMA weights and raw weights
        assert all(torch.equal(a[key][k], b[key][k]) for k in b[key]), key
    f1 = [[json.loads(line)["val_f1"] for line in (runs / n / "metrics.jsonl").read_text().splitlines()]
          for n in ("cut", "straight")]
    assert f1[0] == f1[1] and len(f1[0]) == 2
    swa = [json.loads((runs / n / "run.json").read_text())["swa"] for n in ("cut", "straight")]
    assert swa[0] == swa[1] and swa[0]["epochs"] == [1, 2] and 0 < swa[0]["val_f1"] <= 1 and "val_dice" not in swa[0]
    a, b = (torch.load(runs / n / "checkpoints" / "swa.pt", weights_only=True)["model"] for n in ("cut", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    images = sorted((digits / "test").glob("*/*.png"))
    _ok("infer", *images, "--run", runs / "cut", "--epochs", "last:2", "--soup", "--csv", tmp_path / "soup.csv")
    assert [r["id"] for r in _rows(tmp_path / "soup.csv")] == [p.stem for p in images]


def test_evaluate_a_cls_run_scores_its_validation_rows_as_infer_predicts_them(cls_project, trained, tmp_path):
    import json

    from segkit.ground.config import load_config
    from segkit.infer.classes import validation_rows

    runs = cls_project / "runs"
    out = _ok("evaluate", "--run", runs / "c1", "--out", tmp_path / "r.html")
    assert "run c1: accuracy" in out
    report = json.loads((tmp_path / "r.json").read_text())["report"]
    _ok("infer", "--run", runs / "c1", "--csv", tmp_path / "all.csv")  # every manifest row, as a file
    predicted = {r["id"]: r["label"] for r in _rows(tmp_path / "all.csv")}
    val = validation_rows(load_config(runs / "c1" / "config.yaml"))
    assert sum(map(sum, report["confusion"])) == len(val) < len(predicted)
    assert report["accuracy"] == pytest.approx(np.mean([predicted[r.id] == NAMES[int(r.target)] for r in val]))
    assert "Confusion matrix" in (tmp_path / "r.html").read_text()
    for args, message in ((("--run", runs / "c1", "--search"), "--vs and --search score segmentation runs"),
                          (("--run", trained, "--task", "cls"), "is a seg run; evaluate --task cls scores a cls run")):
        result = _run("evaluate", *args, "--out", tmp_path / "x.html")
        assert result.exit_code == 1 and result.output.startswith("Error:") and message in result.output, result.output
    assert not (tmp_path / "x.html").exists()


def test_a_class_manifest_is_a_truth_file(cls_project, digits, tmp_path):
    """`evaluate --task cls --truth test.csv` with the manifest make_digits writes (id,image,class) scores like an
    id,label truth file of the same classes, and shows the manifest's images next to the wrong rows."""
    import json

    images = sorted((digits / "test").glob("*/*.png"))
    _ok("infer", *images, "--run", cls_project / "runs" / "c1", "--csv", tmp_path / "p.csv", "--probs")
    manifest = _rows(digits / "test.csv")
    assert list(manifest[0]) == ["id", "image", "class"]
    with open(tmp_path / "plain.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "label"]] + [[r["id"], r["class"]] for r in manifest])
    reports = {}
    for name, truth in (("manifest", digits / "test.csv"), ("plain", tmp_path / "plain.csv")):
        out = _ok("evaluate", "--task", "cls", "--pred", tmp_path / "p.csv", "--truth", truth,
                  "--out", tmp_path / f"{name}.html")
        assert "accuracy" in out and "note:" not in out, out  # every row scored
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())["report"]
    assert reports["manifest"] == reports["plain"] and sum(map(sum, reports["plain"]["confusion"])) == len(images)
    wrong = len(images) - int(round(reports["plain"]["accuracy"] * len(images)))
    pictures = (tmp_path / "manifest.html").read_text().count("data:image/png;base64,")
    assert pictures == 1 + min(wrong, 12)  # the confusion matrix and one picture per wrong row shown
    # a prediction file whose extra columns are not probabilities is named with what is expected
    result = _run("evaluate", "--task", "cls", "--pred", digits / "test.csv", "--truth", tmp_path / "plain.csv",
                  "--out", tmp_path / "bad.html")
    assert result.exit_code == 1 and "--pred is read as id (id), label (class) and one probability column per " \
        "class; image must hold numbers" in result.output, result.output


def _digest(folder):
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_oof_predicts_each_row_with_the_fold_that_held_it_out_then_clean(cls_project, digits, tmp_path):
    runs = cls_project / "runs"
    args = ("oof", "--config", cls_project / "cls.yaml", "--set", f"data.manifest={digits / 'train_noisy.csv'}",
            "--set", "train.epochs=1", "--folds", 2, "--name", "noisy", "--out", tmp_path / "oof.csv")
    _ok(*args)
    table = _rows(tmp_path / "oof.csv")
    manifest = _rows(digits / "train_noisy.csv")
    assert [r["id"] for r in table] == [r["id"] for r in manifest]  # one row per manifest row
    assert [r["class"] for r in table] == [r["class"] for r in manifest]
    from segkit.ground.config import load_config
    from segkit.infer.classes import validation_rows

    for fold in (0, 1):
        held_out = {row.id for row in validation_rows(load_config(runs / f"noisy-fold{fold}" / "config.yaml"))}
        assert held_out == {r["id"] for r in table if r["fold"] == str(fold)}
    before = _digest(runs / "noisy-fold0")
    out = _ok(*args, "--overwrite")  # again: both folds are finished, nothing is retrained
    assert _digest(runs / "noisy-fold0") == before and "out-of-fold accuracy" in out

    inputs = _digest(digits)
    (tmp_path / "clean").mkdir()
    out = _ok("clean", "--oof", tmp_path / "oof.csv", "--manifest", digits / "train_noisy.csv",
              "--out", tmp_path / "clean" / "m.csv")
    assert _digest(digits) == inputs and "rows flagged" in out
    issues, kept = _rows(tmp_path / "clean" / "label_issues.csv"), _rows(tmp_path / "clean" / "m.csv")
    assert len(issues) + len(kept) == len(manifest)
    assert not {r["id"] for r in issues} & {r["id"] for r in kept}
    assert all((tmp_path / "clean" / r["image"]).is_file() for r in kept)  # paths relative to the new manifest


def test_oof_in_a_fresh_folder_writes_its_default_csv_into_the_new_runs_folder(cls_project, tmp_path):
    runs = tmp_path / "fresh_runs"  # does not exist yet, as in a new project
    out = _ok("oof", "--config", cls_project / "cls.yaml", "--set", "train.epochs=1", "--folds", 2,
              "--name", "o", "--runs-dir", runs)
    assert (runs / "o.csv").is_file() and (runs / "o-fold1" / "run.json").is_file(), out


@pytest.fixture
def bad_inputs(digits, tmp_path):
    first, second = sorted((digits / "train").glob("*/*.png"))[:2]
    (tmp_path / "cow.csv").write_text(f"id,image,class\na,{first},1\nb,{second},cow\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.csv").write_text(f"image,class\n{tmp_path / 'broken.png'},1\n"
                                         + "".join(f"{p},{p.parent.name}\n" for p in
                                                   sorted((digits / 'train').glob('*/*.png'))[:12]))
    (tmp_path / "mask.csv").write_text(f"id,image,label\nm,{first},{first}\n")
    return tmp_path


@pytest.mark.parametrize("manifest, message", [
    ("cow.csv", r"cow.csv: manifest row 'b': class 'cow' is not in data.class_names \(0, 1, 2"),
    ("broken.csv", r"broken.png: cannot read image"),
    ("mask.csv", r"manifest row 'm' has a label \(d\d+.png\) but no class; --task cls needs a class"),
])
def test_bad_class_manifests_are_one_line_errors_and_write_nothing(cls_project, bad_inputs, manifest, message):
    import re

    result = _run("train", "--config", cls_project / "cls.yaml", "--set", f"data.manifest={bad_inputs / manifest}",
                  "--set", f"run.runs_dir={bad_inputs / 'runs'}")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert re.search(message, lines[-1]) and lines[-1].startswith("Error:") and "Traceback" not in result.output
    assert not (bad_inputs / "runs").exists()


def test_a_class_without_training_rows_is_a_warning_naming_it(cls_project, digits, tmp_path):
    (tmp_path / "m.csv").write_text("image,class\n" + "".join(
        f"{p},{p.parent.name}\n" for p in sorted((digits / "train").glob("[0-3]/*.png"))))
    with pytest.warns(UserWarning, match="class\\(es\\) '4', '5', '6', '7', '8', '9' have no training rows"):
        from segkit.data.inputs import open_class_data
        from segkit.data.dataset import LabelOptions
        from segkit.data.split import FoldSpec

        open_class_data(str(tmp_path / "m.csv"), FoldSpec(4, "stratified", 0, 1), LabelOptions(), class_names=NAMES)


def test_the_missing_class_warning_is_one_line_in_the_command(cls_project, digits, tmp_path):
    import subprocess
    import sys

    (tmp_path / "m.csv").write_text("image,class\n" + "".join(
        f"{p},{p.parent.name}\n" for p in sorted((digits / "train").glob("[0-7]/*.png"))))
    done = subprocess.run([sys.executable, "-m", "segkit", "stats", "--config", str(cls_project / "cls.yaml"),
                           "--set", f"data.manifest={tmp_path / 'm.csv'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "have no training rows" in line]
    assert warned == [f"Warning: {tmp_path / 'm.csv'}: class(es) '8', '9' have no training rows"], done.stderr
    assert "UserWarning" not in done.stderr and "warn_missing_classes(" not in done.stderr


def test_runs_and_outputs_of_the_other_task_are_refused(cls_project, trained, digits, tmp_path):
    runs = cls_project / "runs"
    image = next((digits / "test").glob("*/*.png"))
    for args, message in (
        (("--run", runs / "c1", "--rle", tmp_path / "x.csv"), "is a cls run (one class per image)"),
        (("--run", runs / "c1", "--task", "seg", "--csv", tmp_path / "x.csv"), "is a cls run; it cannot run --task seg"),
        (("--run", trained, "--csv", tmp_path / "x.csv"), "is a seg run; --csv writes image classes of a cls run"),
        (("--run", trained, "--task", "cls", "--csv", tmp_path / "x.csv"), "is a seg run; it cannot run --task cls"),
        (("--run", trained, "--set", "infer.cls_gate=0.5", "--rle", tmp_path / "x.csv"), "gating needs a seg+cls run"),
    ):
        result = _run("infer", image, *args)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_preview_and_stats_of_class_rows(cls_project, tmp_path):
    out = _ok("preview", "--config", cls_project / "cls.yaml", "--out", tmp_path / "grid.png", "--count", 4)
    assert (tmp_path / "grid.png").is_file(), out
    assert "channel 2" in _ok("stats", "--config", cls_project / "cls.yaml")


def test_an_image_with_other_bands_is_named(cls_project, tmp_path_factory, tmp_path):
    import cv2

    gray = tmp_path_factory.mktemp("gray") / "gray.png"
    cv2.imwrite(str(gray), np.full((16, 16), 80, np.uint8))
    result = _run("infer", gray, "--run", cls_project / "runs" / "c1", "--csv", tmp_path / "x.csv")
    assert result.exit_code == 1 and "gray.png: has 1 channel(s) but the run's channel spec reads 3" in result.output
    assert not list(tmp_path.iterdir())
