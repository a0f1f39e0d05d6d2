"""torchrun on CPU (gloo) with a short process-group timeout (run.dist_timeout_s): ranks that finish
their share far apart are not aborted, validation is shared between the ranks, and a cls run's
`infer` splits its rows and writes one CSV.

The timeout bounds the collectives inside a training step; a rank waiting for another at a
gather of results or a barrier is not bound by it (segkit.runs.distributed). Each test gives one
rank at least several seconds more work than the other, longer than the timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from conftest import write_digits_cls_config, write_tiny_project
from segkit.cli import cli

TIMEOUT_S = "1"


def _torchrun(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segkit.cli", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_uneven_images_across_ranks_outlast_the_timeout(tmp_path, trained, project):
    """Rank 0 predicts a large image and a small one, rank 1 one small image and then waits for rank 0
    in the RLE gather, well past the 1 s timeout."""
    base = tifffile.imread(project / "img0.tif")
    sizes = [(200, 230), (40, 50), (50, 61)]  # rank 0: images 0 and 2; rank 1: image 1
    images = []
    for index, (h, w) in enumerate(sizes):
        path = tmp_path / f"img{index}.tif"
        tifffile.imwrite(path, np.resize(base, (h, w)), tile=(32, 32))
        images.append(path)
    single = CliRunner().invoke(cli, ["infer", "-r", str(trained), "--tta", "none", "--rle",
                                      str(tmp_path / "single.csv"), *map(str, images)])
    assert single.exit_code == 0, single.output
    done = _torchrun("infer", "-r", trained, "--tta", "none", "--device", "cpu", "--set",
                     f"run.dist_timeout_s={TIMEOUT_S}", "--rle", tmp_path / "ddp.csv", *images)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert (tmp_path / "ddp.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()


@pytest.mark.slow  # ~40 s on a loaded machine; the shared validation itself runs in test_ddp_cli's 2-rank training
def test_a_validation_longer_than_the_timeout_is_shared_not_waited_for(tmp_path):
    """One validation row (rank 0's share; rank 1 has none and waits in the gather) predicted with eight
    TTA views on a large image: several seconds per epoch against a 1 s timeout."""
    root = write_tiny_project(tmp_path / "p", train={"epochs": 1, "amp": False}, infer={"tta": "d4"})
    image, mask = tifffile.imread(root / "img1.tif"), tifffile.imread(root / "img1_mask.tif")
    tifffile.imwrite(root / "img1.tif", np.tile(image, (4, 3)), tile=(32, 32))  # 360 x 399 px
    tifffile.imwrite(root / "img1_mask.tif", np.tile(mask, (4, 3)))
    done = _torchrun("train", "--config", root / "tiny.yaml", "--device", "cpu", "--set",
                     f"run.dist_timeout_s={TIMEOUT_S}")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    run_dir = next((root / "runs").iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["ddp"]["weights_identical"] is True
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= record["val_dice"] <= 1 and record["seconds"] > float(TIMEOUT_S)
    assert info["hardware"]["precision"] in ("float32", "bf16") and info["hardware"]["device"] == "cpu"


def test_cls_infer_under_two_ranks_writes_the_one_process_csv(digits, tmp_path):
    write_digits_cls_config(digits, tmp_path, infer={"tta": "hflip", "batch_size": 4})
    trained = CliRunner().invoke(cli, ["train", "--config", str(tmp_path / "cls.yaml"), "--name", "c"])
    assert trained.exit_code == 0, trained.output
    run_dir = tmp_path / "runs" / "c"
    images = sorted(str(p) for p in (digits / "train").glob("*/*.png"))[:11]  # 6 rows on rank 0, 5 on rank 1
    single = CliRunner().invoke(cli, ["infer", "-r", str(run_dir), "--csv", str(tmp_path / "one.csv"), *images,
                                      "--probs"])
    assert single.exit_code == 0, single.output
    done = _torchrun("infer", "-r", run_dir, "--device", "cpu", "--set", f"run.dist_timeout_s={TIMEOUT_S}",
                     "--csv", tmp_path / "two.csv", *images, "--probs")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert done.stdout.count("classified 11 image(s)") == 1 and "2 ranks" in done.stdout  # rank 0 reports
