"""`segkit plan` and `segkit auto`: rules alone, the probe with a fake clock, identical plans, end to end."""

import csv
import itertools
import json

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner

from segkit.cli import cli
from segkit.ground.config import load_config
from segkit.ground.errors import SegkitError
from segkit.workflows import rules
from segkit.workflows.budget import Throughput, budget_rule, planned_seconds, probe_throughput


def _fp(diameters, side=1024, share=0.2, kind="mask", touching=0.0, objects=100, dtype="uint8", ranges=((0, 255),)):
    d = np.asarray(diameters, float)
    pct = {f"p{p}": float(np.percentile(d, p)) for p in (5, 25, 50, 75, 95)}
    return {"task": "seg", "majority": {"bands": len(ranges), "dtype": dtype}, "bits": 8 if dtype == "uint8" else 12,
            "range": [list(r) for r in ranges], "image_side_px": {"p50": side},
            "images": [{"usable_share": 1.0}],
            "labels": {"diameter_px": {**pct, "max": float(d.max())},
                       "area_px": {"p5": float(np.pi * (pct["p5"] / 2) ** 2)}, "foreground_share": share,
                       "object_labels": kind, "touching_share": touching, "objects": objects}}


def test_a_scaled_copy_gets_a_scaled_field_of_view_at_the_same_size():
    base = rules.scale_rule(_fp([18, 22, 25, 28, 36]))
    double = rules.scale_rule(_fp([36, 44, 50, 56, 72], side=2048))
    quad = rules.scale_rule(_fp([72, 88, 100, 112, 144], side=4096))
    assert base["data.fov_px"][0] * 2 == double["data.fov_px"][0] and base["data.size"][0] == double["data.size"][0]
    assert base["data.fov_px"][0] * 4 == quad["data.fov_px"][0] and base["data.size"][0] == quad["data.size"][0]
    assert "downscale 2" in double["data.size"][1]


def test_targets_only_for_object_labels_that_touch():
    assert rules.target_rule(_fp([20] * 5, kind="instances", touching=0.3))["data.targets"][0] == "instances"
    assert rules.target_rule(_fp([20] * 5, kind="instances", touching=0.02))["data.targets"][0] is None
    assert rules.target_rule(_fp([20] * 5, kind="mask", touching=0.3))["data.targets"][0] is None
    assert rules.target_rule(_fp([20] * 5, kind="instances", touching=0.5, objects=6))["data.targets"][0] is None


def test_wide_integers_are_windowed_to_their_measured_range():
    out = rules.channel_rule(_fp([20], dtype="uint16", ranges=((1000, 3999), (5, 5))))
    assert out["data.channels"][0] == [{"band": 0, "window": [1000.0, 3999.0]}, {"band": 1, "window": [5.0, 6.0]}]
    assert rules.channel_rule(_fp([20]))["data.channels"][0] is None


def test_rare_foreground_gets_more_object_windows_and_focal():
    out = rules.foreground_rule(_fp([20], share=0.004))
    assert out["data.foreground_share"][0] == 0.5 and out["train.loss"][0][1]["name"] == "focal"


def _discs(rng, height, width, count):
    yy, xx = np.mgrid[:height, :width]
    ids = np.zeros((height, width), np.uint16)
    for k in range(1, count + 1):
        r, c, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 8)
        ids[((yy - r) ** 2 + (xx - c) ** 2 <= radius**2) & (ids == 0)] = k
    image = np.clip(rng.normal(60, 12, (height, width)) + 120 * (ids > 0), 0, 255).astype(np.uint8)
    return image, ids


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for index in range(2):
        image, ids = _discs(rng, 96, 128, 40)
        tifffile.imwrite(tmp_path / f"img{index}.tif", image)
        tifffile.imwrite(tmp_path / f"img{index}_mask.tif", (ids > 0).astype(np.uint8))
        rows.append({"id": f"img{index}", "image": f"img{index}.tif", "label": f"img{index}_mask.tif", "fold": index})
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "run": {"runs_dir": str(tmp_path / "runs"), "progress": False},
        "data": {"manifest": str(tmp_path / "manifest.csv"), "val_fold": 1, "stats_windows": 4},
        "infer": {"batch_size": 4}}))
    return tmp_path


def test_the_probe_based_epochs_fit_a_fake_clock(project):
    ticks = itertools.count()
    config = load_config(project / "base.yaml", ["data.fov_px=64", "data.size=64", "train.batch_size=4"])
    tp = probe_throughput(config, steps=2, clock=lambda: 0.5 * next(ticks))
    assert tp.step_s == 0.25 and tp.val_s == 0.5 and tp.startup_s == 0.5  # one tick between each pair of reads
    for budget in (20, 60, 600):
        decided = budget_rule(tp, budget)
        epochs, windows = decided["train.epochs"][0], decided["train.windows_per_epoch"][0]
        assert epochs >= 1 and windows >= 4 * tp.batch_size
        assert budget * 0.9 <= planned_seconds(tp, epochs, windows) <= budget
    with pytest.raises(SegkitError, match="smallest that works is 6s"):
        budget_rule(tp, 5)


def test_a_plan_is_identical_across_two_calls_and_loads_as_a_config(project):
    runner = CliRunner()
    outputs = []
    for name in ("a.yaml", "b.yaml"):
        # an hour: any load leaves room for an epoch (the second call reads the cached probe)
        result = runner.invoke(cli, ["plan", str(project / "base.yaml"), "--budget", "1h", "--out",
                                     str(project / name), "--set", "train.lr=0.001"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append((project / name).read_bytes())
    assert outputs[0] == outputs[1]
    plan = yaml.safe_load(outputs[0])
    config = load_config(project / "a.yaml")
    assert config.train.lr == 0.001 and plan["why"]["train.lr"].startswith("set by --set (the plan: 0.003")
    assert config.data.fov_px == plan["data"]["fov_px"] and set(plan["why"]) >= {"data.fov_px", "train.epochs"}
    assert "train.epochs" in result.output and "data.fov_px" in result.output


def test_auto_end_to_end_writes_a_run_that_infer_uses_without_flags(project):
    """Real training and empirical stage; the throughput is given (the probe's own test is the fake clock's),
    so the plan does not depend on how loaded the machine running the tests is."""
    from segkit.workflows.auto import run_auto
    from segkit.workflows.plan import make_plan

    config = load_config(project / "base.yaml", ["run.name=a"])
    tp = Throughput(step_s=0.25, val_s=0.3, startup_s=1.0, batch_size=8, size=64, device="cpu")
    plan = make_plan(config, budget_s=12, probe=lambda c: tp, overrides=["train.epochs=3", "train.windows_per_epoch=8"])
    assert plan.why["train.epochs"].startswith("set by --set")
    lines = []
    summary = run_auto(config, budget_s=600, plan=plan, echo=lines.append)  # no deadline: every step runs
    output = "\n".join(lines)
    run = project / "runs" / "a"
    info = json.loads((run / "run.json").read_text())
    chosen = info["auto_empirical"]
    assert chosen["fold"] == 1 and chosen["before"] is not None and chosen["after"] >= chosen["before"] - 1e-9
    config = load_config(run / "config.yaml")
    assert config.infer.threshold == chosen["keys"]["threshold"] and config.infer.epochs == chosen["epochs"]
    assert (run / "plan.yaml").is_file() and "validation dice" in output and summary["run"] == str(run)
    assert "data.fov_px" in output and "checkpoints: last:3" in output and "views: identity" in output
    assert any(note.startswith("crf (bilateral") for note in chosen["notes"])
    assert config.infer.use_crf == ("use_crf" in chosen["keys"])

    # the choices come from the validation fold only: emptying the training labels changes nothing
    from segkit.runs.device import pick_device
    from segkit.workflows.empirical import choose

    from segkit.runs.rundir import save_config

    planned = plan.config.infer
    save_config(load_config(None, [f"infer.{k}={getattr(planned, k)}" for k in ("epochs", "tta", "threshold",
                                                                                "min_object_px")], base=config),
                run / "config.yaml")  # back to the planned infer keys
    tifffile.imwrite(project / "img0_mask.tif", np.zeros((96, 128), np.uint8))
    again = choose(run, pick_device("cpu"), deadline=float("inf"))
    assert again.keys == chosen["keys"]

    out = project / "out.geojson"
    runner = CliRunner()
    result = runner.invoke(cli, ["infer", "-r", str(run), str(project / "img1.tif"), "--polygons", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["features"]


def test_a_cls_plan_reads_the_image_sizes_and_the_class_balance(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tools = Path(__file__).resolve().parents[1] / "tools"
    subprocess.run([sys.executable, str(tools / "make_digits.py"), str(tmp_path / "d"), "--per-class", "6"],
                   check=True, capture_output=True)
    result = CliRunner().invoke(cli, ["plan", str(tmp_path / "d" / "train.csv"), "--task", "cls", "--out",
                                      str(tmp_path / "plan.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "plan.yaml")
    assert config.task == "cls" and config.data.size == 32 and config.model.encoder == "tu-resnet10t"
    assert config.infer.calibrate and config.infer.tta == "none" and "data.class_balanced" in config.why


def test_a_seg_cls_plan_is_a_seg_plan_with_the_class_head(tmp_path):
    result = CliRunner().invoke(cli, ["plan", "sample-instances", "--task", "seg+cls", "--out",
                                      str(tmp_path / "plan.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "plan.yaml")
    assert config.task == "seg+cls" and config.data.targets is None and config.data.fov_px >= 96
    assert "task seg+cls" in config.why["data.targets"]


def test_a_local_encoder_weights_file_is_loaded_and_kept_by_the_plan(tmp_path, project):
    import torch

    from segkit.models.factory import create_model
    from segkit.workflows.plan import weights_rule

    donor = create_model("Unet", "resnet18", None, in_channels=3)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in donor.encoder.state_dict().items()}}, tmp_path / "r18.pth")
    with pytest.warns(UserWarning, match="1 tensor"):  # conv1 holds 3 bands, this model 1
        model = create_model("Unet", "resnet18", str(tmp_path / "r18.pth"), in_channels=1)
    assert torch.equal(model.encoder.layer4[0].conv1.weight, donor.encoder.layer4[0].conv1.weight)
    config = load_config(project / "base.yaml", [f"model.encoder_weights={tmp_path / 'r18.pth'}"])
    assert weights_rule(config)["model.encoder_weights"][0] == str(tmp_path / "r18.pth")
    with pytest.raises(SegkitError, match="weights file not found"):
        create_model("Unet", "resnet18", str(tmp_path / "nope.pth"), in_channels=1)


def test_a_low_resolution_first_stage_only_where_the_objects_stay_visible():
    big = _fp([140, 150, 160, 170, 180], side=4096)  # downscale 4 already: the small objects span ~37 px
    planned = rules.scale_rule(big)
    fov, size = planned["data.fov_px"][0], planned["data.size"][0]
    low, why = rules.low_stage_size(big, fov, size)
    assert low == 32 * ((size // 2) // 32) and "fine-tune at" in why
    nuclei = _fp([18, 22, 25, 28, 36])
    planned = rules.scale_rule(nuclei)
    low, why = rules.low_stage_size(nuclei, planned["data.fov_px"][0], planned["data.size"][0])
    assert low is None and why.startswith("one stage")


def test_two_stages_fit_the_budget_or_one_stage_is_planned():
    from segkit.workflows.budget import EMPIRICAL_PASSES, stages_rule
    from segkit.workflows.plan import stage_decisions

    full = Throughput(step_s=0.4, val_s=1.0, startup_s=2.0, batch_size=4, size=320, device="cpu")
    low = Throughput(step_s=0.1, val_s=0.4, startup_s=2.0, batch_size=4, size=160, device="cpu")
    for budget in (120, 600):
        staged = stages_rule(low, full, budget)
        e1, w1 = staged["train.epochs"][0], staged["train.windows_per_epoch"][0]
        e2, w2 = staged["train.finetune_epochs"][0], staged["train.finetune_windows_per_epoch"][0]
        spent = (low.startup_s + full.startup_s + e1 * (w1 // 4 * low.step_s + low.val_s)
                 + e2 * (w2 // 4 * full.step_s + full.val_s) + EMPIRICAL_PASSES * full.val_s)
        assert budget * 0.9 <= spent <= budget and e1 >= 2 and e2 >= 2
        assert staged["train.finetune_size"][0] == 320
    assert stages_rule(low, full, 25) is None  # not two epochs of each: one stage

    config = load_config(None, ["data.fov_px=1280", "data.size=320", "train.batch_size=4"])
    big = _fp([140, 150, 160, 170, 180], side=4096)
    sizes = []

    def probe(c):
        sizes.append(c.data.size)
        return low

    decided = stage_decisions(config, big, {}, full, 600, probe)
    assert sizes == [160] and decided["data.size"][0] == 160 and decided["train.finetune_size"][0] == 320
    assert stage_decisions(config, big, {}, full, 25, probe)["train.finetune_size"][0] is None
    assert stage_decisions(config, big, {"data.size": 320}, full, 600, probe) == {}  # --set wins


def test_the_deadline_hook_measures_epochs_by_its_own_clock():
    from segkit.train.fit import StopRun
    from segkit.workflows.auto import deadline_hook

    now = [100.0]
    hook = deadline_hook(140.0, clock=lambda: now[0])
    now[0] = 105.0
    hook(None, {"seconds": 30.0})  # the first epoch by its record: 105 + 30 <= 140 goes on
    now[0] = 115.0
    hook(None, {"seconds": 99.0})  # then by the clock: 10 s an epoch (the record's wall seconds are not read)
    now[0] = 131.0
    with pytest.raises(StopRun, match="budget"):
        hook(None, {"seconds": 1.0})  # 16 s an epoch: 131 + 16 > 140


def test_the_empirical_stage_switches_the_crf_on_only_when_it_raises_validation_dice(tmp_path):
    """A sharp bright disc whose predicted probabilities spill 8 px past it: the CRF, its bilateral kernel one
    object wide, pulls the mask back to the image's edge; on probabilities that already fit, it stays off."""
    from segkit.workflows.empirical import Stage, _choose_crf, crf_params

    pytest.importorskip("pydensecrf")  # the crf extra
    yy, xx = np.mgrid[:96, :96]
    disc = (yy - 48) ** 2 + (xx - 48) ** 2 <= 20**2
    tifffile.imwrite(tmp_path / "img.tif", np.where(disc, 220, 30).astype(np.uint8))
    (tmp_path / "fingerprint.json").write_text(json.dumps({"labels": {"diameter_px": {"p50": 40.0}}}))
    assert crf_params(tmp_path) == {"sxy_gaussian": 1, "compat_bilateral": 5, "sxy_bilateral": 40.0}
    items = [("img", tmp_path / "img.tif", (0, 0, 96, 96), disc)]
    config = load_config(None, [])
    spill = (yy - 48) ** 2 + (xx - 48) ** 2 <= 28**2
    stage = Stage(epochs="best", views=("identity",), keys={"threshold": 0.5, "min_object_px": 0})
    _choose_crf(stage, {"img": {"identity": np.where(spill, 0.6, 0.1).astype(np.float32)}}, items, config, tmp_path)
    assert stage.keys["use_crf"] is True and stage.keys["crf"]["sxy_bilateral"] == 40.0 and stage.after > 0.95
    exact = Stage(epochs="best", views=("identity",), keys={"threshold": 0.5, "min_object_px": 0})
    _choose_crf(exact, {"img": {"identity": np.where(disc, 0.99, 0.01).astype(np.float32)}}, items, config, tmp_path)
    assert "use_crf" not in exact.keys and exact.notes[-1].endswith("-> off")


def test_an_auto_run_cut_in_its_first_stage_resumes_through_fine_tune_and_empirical_stage(project, monkeypatch):
    """A planned fine-tune trains from the first stage. Ctrl-C after stage 1's first epoch keeps the checkpoint
    and the plan; `auto --resume` trains stage 1's second epoch (not a new run), the planned fine-tune from its
    best checkpoint, then chooses the infer settings."""
    import segkit.workflows.auto as auto_module
    from segkit.workflows.plan import make_plan

    config = load_config(project / "base.yaml", ["run.name=cut"])
    tp = Throughput(step_s=0.25, val_s=0.3, startup_s=1.0, batch_size=8, size=64, device="cpu")
    plan = make_plan(config, budget_s=12, probe=lambda c: tp, overrides=[
        "data.fov_px=64", "data.size=32", "train.finetune_size=64", "train.epochs=2", "train.finetune_epochs=1",
        "train.windows_per_epoch=8", "train.finetune_windows_per_epoch=8"])
    real_hook = auto_module.deadline_hook

    def ctrl_c_after_epoch_one(deadline, clock):
        def hook(run_dir, record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt
        return hook

    monkeypatch.setattr(auto_module, "deadline_hook", ctrl_c_after_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        auto_module.run_auto(config, budget_s=600, plan=plan, echo=lambda line: None)
    first = project / "runs" / "cut"
    assert json.loads((first / "run.json").read_text())["status"] == "interrupted"
    assert (first / "plan.yaml").is_file() and not (project / "runs" / "cut-ft").exists()
    monkeypatch.setattr(auto_module, "deadline_hook", real_hook)

    runner = CliRunner()
    result = runner.invoke(cli, ["auto", "--resume", str(first), "--budget", "10m"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in map(json.loads, (first / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    final = project / "runs" / "cut-ft"
    info = json.loads((final / "run.json").read_text())
    assert info["command"] == "finetune" and info["parent"] == str(first) and info["auto"]["run"] == str(final)
    assert (final / "plan.yaml").is_file() and "resuming auto run" in result.output
    assert load_config(final / "config.yaml").data.size == 64 and "fine-tune at 64 px" in result.output
    assert load_config(final / "config.yaml").infer.threshold == info["auto_empirical"]["keys"]["threshold"]

    again = runner.invoke(cli, ["auto", "--resume", str(first), "--budget", "10m"])
    assert again.exit_code == 1 and again.output.strip() == f"Error: {final}: auto run has finished; nothing to resume"
