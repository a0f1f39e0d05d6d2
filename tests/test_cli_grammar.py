"""One CLI grammar: every command takes --config/--set/--runs-dir/--device, refuses --set keys it
does not read, chooses runs with --run, ships its recipes, prints configs, runs as python -m segkit,
and prints plain progress lines off a terminal."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from click.testing import CliRunner

from segkit.cli import cli
from segkit.ground.config import Config, RECIPES_DIR, load_config, recipe_names, to_dict

COMMANDS = ["train", "finetune", "infer", "stats", "preview", "config"]
PROGRESS = {"SEGKIT_PROGRESS_SECONDS": "0"}  # a progress line at every update


def run_cli(*args, expect=0, env=None):
    result = CliRunner(env=env).invoke(cli, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_the_shared_options(command):
    text = run_cli(command, "--help").output
    for option in ("--config FILE|RECIPE", "--set KEY=VALUE", "--runs-dir DIR", "--device"):
        assert option in text, f"{command} --help lacks {option}"
    if command in ("finetune", "infer", "config"):
        assert "-r, --run RUN" in text or "--run, " in text


@pytest.mark.parametrize("command, key, reads", [
    ("infer", "train.lr=1", "infer.*, run.*, data.manifest, data.class_names, train.amp"),
    ("stats", "infer.tta=d4", "task, run.*, data.*"),
    ("preview", "model.arch=FPN", "task, run.*, data.*"),
])
def test_a_command_refuses_a_key_it_does_not_read(tmp_path, trained, command, key, reads):
    extra = ["--out", tmp_path / "x.png"] if command == "preview" else []
    extra += ["-r", trained] if command == "infer" else []
    result = run_cli(command, "--set", key, *extra, expect=1)
    name = key.split("=")[0]
    assert result.output.strip() == f"Error: --set {name}: `segkit {command}` does not read it (it reads {reads})"
    assert list(tmp_path.iterdir()) == []


def test_infer_takes_config_set_runs_dir_and_device_and_prints_progress_lines(tmp_path, trained, project):
    (tmp_path / "infer.yaml").write_text(yaml.safe_dump({"infer": {"tta": "none", "epochs": "last:1"}}))
    out = tmp_path / "sub.csv"
    result = run_cli("infer", "--config", tmp_path / "infer.yaml", "--set", "infer.threshold=0.4", "--runs-dir",
                     project / "runs", "--device", "cpu", "-r", "stage1", "--rle", out, "--set", "run.progress=true",
                     project / "img0.tif", env=PROGRESS)
    assert "tta none" in result.stdout and "[epoch_0002.pt]" in result.stdout and out.exists()
    # off a terminal: plain progress lines with a rate, no carriage returns
    assert "\r" not in result.stderr
    assert any(line.startswith("img0.tif: ") and "tiles/s" in line for line in result.stderr.splitlines())


def test_finetune_takes_the_grammar_and_from_is_an_alias_of_run(tmp_path, trained, project):
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"train": {"windows_per_epoch": 4}}))
    runs = tmp_path / "runs"
    result = run_cli("finetune", "--run", trained, "--size", 48, "--epochs", 1, "--config", tmp_path / "ft.yaml",
                     "--set", "train.batch_size=2", "--runs-dir", runs, "--device", "cpu", "--name", "ft",
                     "--set", "run.progress=true", env=PROGRESS)
    config = load_config(runs / "ft" / "config.yaml")
    assert (config.data.size, config.train.windows_per_epoch, config.train.batch_size) == (48, 4, 2)
    assert config.run.runs_dir == str(runs) and config.run.device == "cpu" and config.data.fov_px == 48
    # off a terminal, training and validation print plain progress lines (rate, ETA)
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr
    assert any(line.startswith("epoch 1/1: 1/2 batches (50%), ") and "ETA" in line for line in lines), lines
    assert any(line.startswith("validate img1: ") and " tiles/s" in line for line in lines), lines


def test_stats_takes_the_grammar_and_a_fold(tmp_path, project):
    result = run_cli("stats", "--config", project / "tiny.yaml", "--set", "data.stats_windows=2", "--runs-dir",
                     tmp_path / "runs", "--device", "cpu", "--fold", 0)
    assert "channel 0 (band 0, window 0..255)" in result.output
    run_cli("stats", "--config", project / "tiny.yaml", "--fold", 7, expect=1)


def test_recipes_are_addressable_by_name_and_listed_in_errors():
    assert {"sample", "augment_baseline", "augment_heavy_noise"} <= set(recipe_names())
    assert load_config("sample").data.fov_px == 256
    assert load_config("sample.yaml").train.epochs == load_config(RECIPES_DIR / "sample.yaml").train.epochs
    result = run_cli("stats", "--config", "sampel", expect=1)
    assert result.output.startswith("Error: sampel: cannot read config (no such file; recipes shipped with segkit: "
                                    "aerial, augment_baseline, augment_heavy_noise, classification, ct, digits, histology, sample, "
                                    "small_images)")


def test_package_data_ships_the_recipes():
    from setuptools.config.setupcfg import read_configuration

    root = Path(__file__).resolve().parents[1]
    patterns = read_configuration(root / "setup.cfg")["options"]["package_data"]["segkit"]
    shipped = {p.relative_to(root / "segkit").as_posix() for pattern in patterns for p in (root / "segkit").glob(pattern)}
    assert {f"configs/{name}.yaml" for name in recipe_names()} <= shipped and "configs/sample.yaml" in shipped


@pytest.mark.slow
def test_built_wheel_contains_the_recipes(tmp_path):
    import shutil
    import zipfile

    pytest.importorskip("wheel")
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "segkit", src / "segkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("segkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"segkit/configs/{name}.yaml" for name in recipe_names()} <= names


def test_config_prints_commented_defaults_a_run_or_a_resolved_file(trained, project):
    text = run_cli("config").output
    assert "# " in text and yaml.safe_load(text) == to_dict(Config())
    run = yaml.safe_load(run_cli("config", "--run", "stage1", "--runs-dir", project / "runs").output)
    assert run == yaml.safe_load((trained / "config.yaml").read_text())
    resolved = yaml.safe_load(run_cli("config", "--config", "sample", "--set", "train.lr=0.01").output)
    assert resolved["train"]["lr"] == 0.01 and resolved["data"]["fov_px"] == 256


def test_python_m_segkit():
    done = subprocess.run([sys.executable, "-m", "segkit", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Commands:" in done.stdout and "config" in done.stdout


def test_the_cli_loads_no_torch_until_a_command_runs():
    """--help, --explain and every one-line argument error answer without importing torch and smp (seconds)."""
    code = "import sys, segkit.cli; print(sorted(m for m in ('torch', 'segmentation_models_pytorch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_narrow_uint16_gets_a_percentile_window_by_default(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b"):
        image = rng.integers(1000, 2300, size=(70, 90)).astype(np.uint16)   # 2% of the uint16 range
        mask = np.zeros((70, 90), np.uint8)
        mask[20:40, 30:60] = 1
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", mask)
    result = run_cli("stats", "--set", f"data.manifest={tmp_path}", "--set", "data.size=32", "--set",
                     "data.stats_windows=4", "--set", "data.folds=2", "--set", "data.val_fold=1")
    line = result.output.splitlines()[0]
    assert "(percentiles 1-99)" in line
    mean = float(line.split("mean ")[1].split()[0])
    # uniform values, scaled between their 1st and 99th percentiles: mean 0.5 (the dtype range would give ~0.025)
    assert mean == pytest.approx(0.5, abs=0.02)
