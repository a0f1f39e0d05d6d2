"""`segkit infer` bad input: one-line errors, non-zero exit, and no output file left behind."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import tifffile
from click.testing import CliRunner

from segkit.cli import cli


def infer(*args):
    return CliRunner().invoke(cli, ["infer", *[str(a) for a in args]])


def assert_one_line_error(result, message):
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_run_without_checkpoints(tmp_path, trained):
    empty = tmp_path / "empty_run"
    shutil.copytree(trained, empty)
    for path in (empty / "checkpoints").glob("*.pt"):
        path.unlink()
    assert_one_line_error(infer("--run", empty, "--rle", tmp_path / "x.csv"), "no checkpoints")
    assert not (tmp_path / "x.csv").exists()


def test_epoch_that_does_not_exist(tmp_path, trained):
    result = infer("--run", trained, "--epochs", "7", "--rle", tmp_path / "x.csv")
    assert_one_line_error(result, "no checkpoint for epoch 7; available epochs: 1, 2")


def test_channel_count_mismatch_names_the_image(tmp_path, trained):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.full((40, 50, 3), 100, np.uint8), photometric="rgb")
    result = infer("--run", trained, "--rle", tmp_path / "x.csv", rgb)
    assert_one_line_error(result, "rgb.tif: has 3 channel(s) but the run's channel spec reads 1")


def test_missing_output_folders_are_made_unless_the_command_fails(tmp_path, trained, project):
    result = infer("--run", trained, "--rle", tmp_path / "nowhere" / "x.csv", project / "img0.tif")
    assert result.exit_code == 0 and (tmp_path / "nowhere" / "x.csv").is_file(), result.output
    # an image that fails: neither the outputs nor the folders made for them stay
    result = infer("--run", trained, "--rle", tmp_path / "a" / "x.csv", "--mask", tmp_path / "a" / "b" / "{id}.tif",
                   project / "img0.tif", tmp_path / "missing.tif")
    assert_one_line_error(result, "missing.tif")
    assert not (tmp_path / "a").exists()


def test_bad_later_image_fails_before_any_output(tmp_path, trained, project):
    rgb = tmp_path / "zz_rgb.tif"
    tifffile.imwrite(rgb, np.full((40, 50, 3), 100, np.uint8), photometric="rgb")
    result = infer("--run", trained, "--rle", tmp_path / "sub.csv", "--mask", tmp_path / "m_{id}.tif",
                   project / "img0.tif", rgb)
    assert_one_line_error(result, "zz_rgb.tif: has 3 channel(s)")
    assert sorted(os.listdir(tmp_path)) == ["zz_rgb.tif"]


def test_read_failure_mid_stream_leaves_no_csv(tmp_path, trained, project):
    """The second image is truncated: refused (its tiles point past the end of the file) before any
    output exists; a file corrupt inside, failing mid-read, is a row of tests/test_bad_inputs.py."""
    broken = tmp_path / "zz_broken.tif"
    tifffile.imwrite(broken, np.full((300, 300), 100, np.uint8), tile=(64, 64))
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    result = infer("--run", trained, "--rle", tmp_path / "sub.csv", project / "img0.tif", broken)
    assert result.exit_code != 0
    assert sorted(os.listdir(tmp_path)) == ["zz_broken.tif"]


def test_ctrl_c_during_infer_leaves_no_output(tmp_path, trained):
    """A real SIGINT to a running `segkit infer` process: no output file and no temp file remain."""
    big = tmp_path / "big.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(big, rng.integers(0, 255, (2000, 1500), dtype=np.uint8), tile=(256, 256))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    command = [sys.executable, "-m", "segkit.cli", "infer", "--run", str(trained), "--tta", "d4",
               "--rle", str(out_dir / "sub.csv"), str(big)]
    # a shell's background job (`cmd &`, as CI runners may start the suite) ignores SIGINT, and a child
    # inherits that; Ctrl-C reaches a foreground segkit with the default disposition, so the child gets it back
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not any(out_dir.iterdir()) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the writer's temp file appears once prediction starts
    assert process.poll() is None, process.stdout.read().decode()
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode != 0
    assert list(out_dir.iterdir()) == [], output
