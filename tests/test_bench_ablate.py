"""tools/bench_ablate.py: one key per arm, seeds that matter, a table made of the printed per-seed scores."""

import importlib
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
arms_mod = importlib.import_module("ablate_arms")
ablate_data = importlib.import_module("ablate_data")
bench = importlib.import_module("bench_ablate")

from segkit.train import from_config as fc  # noqa: E402
from segkit.train.stage import weights_digest  # noqa: E402

SEG = ablate_data.Dataset("nuclei", "seg", Path("manifest.csv"), bands=1, diameter_px=20.0, area_px=300.0)
CLS = ablate_data.Dataset("digits", "cls", Path("train_noisy.csv"))


@pytest.mark.parametrize("dataset", [SEG, CLS], ids=["seg", "cls"])
@pytest.mark.parametrize("budget", ["full", "quick"])
def test_every_arm_changes_exactly_its_key(dataset, budget, tmp_path):
    base = arms_mod.base_config(dataset, 3, tmp_path, budget)
    arms = arms_mod.arms_for(dataset)
    assert len(arms) >= (10 if dataset.task == "seg" else 5)
    for arm in arms:
        config = arms_mod.arm_config(base, arm, dataset)
        diff = arms_mod.config_diff(base, config)
        assert list(diff) == [arm.key], (arm.name, diff)
        assert diff[arm.key][1] not in (None, 0, False, "none", "last:1"), (arm.name, diff)  # the technique is on
    assert arms_mod.config_diff(base, arms_mod.base_config(dataset, 4, tmp_path, budget)) == {"run.seed": (3, 4)}


@pytest.mark.parametrize("budget", ["full", "quick"])
def test_the_progressive_arm_trains_the_base_number_of_steps(budget, tmp_path):
    base = arms_mod.base_config(SEG, 0, tmp_path, budget)
    arm = next(a for a in arms_mod.ARMS if a.name == "progressive")
    stages = arms_mod.stages(arms_mod.arm_config(base, arm, SEG), base, arm)
    assert [command for command, _ in stages] == ["train", "finetune"]
    assert stages[0][1].data.size == base.data.size // 2 and stages[1][1].data.size == base.data.size
    assert sum(arms_mod.optimizer_steps(c) for _, c in stages) == arms_mod.optimizer_steps(base)
    assert arms_mod.config_diff(stages[1][1], base) == {"train.epochs": (stages[1][1].train.epochs, base.train.epochs)}


def _fingerprint(config):
    """What run.seed decides in a training run: the first windows drawn (after augmentation) and the initial
    weights (segkit.train.fit builds the model with from_config.build_model, which seeds torch first)."""
    config = fc.with_fov(config)
    data = fc.training_data(config)
    preprocess = fc.preprocess_for(config, data)
    dataset = fc.train_dataset(config, data, preprocess, fc.augment_for(config, data, preprocess), rank=0, world=1)
    items = [dataset[i] for i in range(4)]
    windows = np.stack([np.asarray(item["window"]) for item in items])  # (row index, row, col, height, width)
    images = np.stack([np.asarray(item["image"]) for item in items])
    return (windows, images), weights_digest(fc.build_model(config, preprocess.in_channels))


def test_seeds_change_the_windows_and_the_initial_weights(tmp_path):
    dataset = ablate_data.nuclei(tmp_path, quick=True)
    (w0, d0), (w0b, d0b), (w1, d1) = (_fingerprint(arms_mod.base_config(dataset, s, tmp_path, "quick"))
                                      for s in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(w0, w0b)) and d0 == d0b  # a seed repeats its run
    assert not np.array_equal(w0[0], w1[0])  # other windows
    assert not np.array_equal(w0[1], w1[1]) and d0 != d1  # other pixels, other initial weights


def test_labels_read_as_masks_or_as_objects(tmp_path):
    """The polygon labels give the same foreground either way, and the sample's objects as objects."""
    import tifffile

    dataset = ablate_data.nuclei(tmp_path, quick=True)
    base = arms_mod.base_config(dataset, 0, tmp_path, "quick")
    items = importlib.import_module("ablate_score").truth_items(base)
    ids = tifffile.imread(ablate_data.SAMPLE / "nuclei_instances.tif")[384:, :256]
    assert len(items) == 1 and np.array_equal(items[0].truth > 0, ids > 0)
    assert len(np.unique(items[0].truth)) == len(np.unique(ids))
    assert dataset.diameter_px > 5 and dataset.area_px > 20


def _run_and_check(out, datasets: str, arms: str, capsys, extra=()) -> tuple[list, str]:
    """Run the tool; check every summary and table difference against the printed per-seed scores."""
    argv = ["--out", str(out), "--quick", "--datasets", datasets, "--seeds", "0,1", "--arms", arms, *extra]
    assert bench.main(argv) == 0
    printed = bench.parse_seed_lines(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())["rows"]
    table = (out / "table.md").read_text()
    assert {r["seed"] for r in printed} == {0, 1} and summary
    for row in (r for r in summary if r["arm"] != "base"):
        scores = {r["seed"]: r["scores"][row["metric"]] for r in printed
                  if r["dataset"] == row["dataset"] and r["arm"] == row["arm"]}
        base = {r["seed"]: r["scores"][row["metric"]] for r in printed
                if r["dataset"] == row["dataset"] and r["arm"] == "base"}
        diffs = [scores[s] - base[s] for s in (0, 1)]
        assert row["diff_mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-9)
        assert row["diff_sd"] == pytest.approx(statistics.stdev(diffs), abs=1e-9)
        assert f"{statistics.fmean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}" in table
    return printed, table


def test_a_seg_run_prints_per_seed_scores_and_the_table_is_made_of_them(tmp_path, capsys):
    """A real quick run on the nuclei (2 seeds, the CRF arm on the base models), the table put into a page."""
    out, docs = tmp_path / "out", tmp_path / "page.md"
    docs.write_text(f"# page\n{bench.MARK_START}\nold\n{bench.MARK_END}\nafter\n")
    printed, table = _run_and_check(out, "nuclei", "crf", capsys, ["--docs", str(docs)])
    assert {(r["dataset"], r["arm"]) for r in printed} == {("nuclei", "base"), ("nuclei", "crf")}
    assert set(printed[0]["scores"]) == {"dice", "object_f1"}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert all(r["train_cpu_s"] > 0 and r["steps"] == 2 for r in records)  # 2 epochs of 8 windows, batch 8
    grid = json.loads((out / "crf_grid_nuclei.json").read_text())
    assert grid["rows"][0]["crf"] is None and len(grid["rows"]) > 10
    page = docs.read_text()
    assert page.startswith("# page\n") and page.endswith(f"{bench.MARK_END}\nafter\n") and "old" not in page
    assert table in page
    # a rerun finds every record and trains nothing; --render rebuilds the same table
    assert bench.main(["--out", str(out), "--quick", "--datasets", "nuclei", "--seeds", "0,1", "--render"]) == 0
    assert (out / "table.md").read_text() == table


def test_a_cls_run_scores_macro_f1_on_the_test_split(tmp_path, capsys):
    printed, _ = _run_and_check(tmp_path / "out", "digits", "epoch_ensemble", capsys)
    assert {(r["dataset"], r["arm"]) for r in printed} == {("digits", "base"), ("digits", "epoch_ensemble")}
    assert all(0 <= r["scores"]["macro_f1"] <= 1 for r in printed)


@pytest.mark.slow
def test_every_arm_runs_on_every_dataset(tmp_path, capsys):
    """The quick version of the whole benchmark: every arm, every dataset, 2 seeds; equal steps per arm."""
    printed, _ = _run_and_check(tmp_path / "out", "nuclei,scene,digits", ",".join(arms_mod.ARM_NAMES), capsys)
    for name, task in (("nuclei", "seg"), ("scene", "seg"), ("digits", "cls")):
        wanted = {"base"} | {a.name for a in arms_mod.ARMS if task in a.tasks}
        assert {r["arm"] for r in printed if r["dataset"] == name} == wanted
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    for name in ("nuclei", "scene", "digits"):
        assert len({r["steps"] for r in records if r["dataset"] == name}) == 1, name


def test_paired_differences_and_noise():
    row = bench.table.paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.6, 1: 0.7, 2: 0.81})
    assert row["diff_mean"] == pytest.approx(0.10333, abs=1e-4) and not row["within_noise"]
    noisy = bench.table.paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.7, 1: 0.5, 2: 0.7})
    assert noisy["within_noise"] and math.isclose(noisy["diff_mean"], 0.1 / 3)
    assert bench.table.cell(noisy).startswith(bench.table.NOISE) and bench.table.cell(row).startswith("**")
