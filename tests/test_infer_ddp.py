"""`torchrun --nproc_per_node=2 -m segkit.cli infer`: images split across two CPU ranks (gloo).

Each rank writes its own images' masks; rank 0 gathers the RLE rows and writes the one CSV in
input order, which must equal the single-process CSV byte for byte.
"""

import os
import subprocess
import sys

import numpy as np
import tifffile
from click.testing import CliRunner

from segkit.cli import cli


def test_two_ranks_write_the_same_csv_as_one_process(tmp_path, trained, project):
    rng = np.random.default_rng(3)
    base = tifffile.imread(project / "img0.tif")
    images = []
    for index, (h, w) in enumerate([(70, 90), (90, 133), (50, 61)]):  # 3 images over 2 ranks: 2 + 1
        path = tmp_path / f"tiny{index}.tif"
        crop = np.roll(base, rng.integers(0, 50), axis=1)[:h, :w]
        tifffile.imwrite(path, crop, tile=(32, 32))
        images.append(str(path))
    single = CliRunner().invoke(cli, ["infer", "--run", str(trained), "--tta", "none", "--rle",
                                      str(tmp_path / "single.csv"), *images])
    assert single.exit_code == 0, single.output

    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segkit.cli", "infer", "-r", str(trained), "--tta", "none", "--device", "cpu",
               "--rle", str(out / "ddp.csv"), "--mask", str(out / "mask_{id}.tif"), *images]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "ddp.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["ddp.csv", "mask_tiny0.tif", "mask_tiny1.tif", "mask_tiny2.tif"]
    assert done.stdout.count("predicted 3 image(s)") == 1 and "2 ranks" in done.stdout  # rank 0 reports
    for index, path in enumerate(images):
        assert tifffile.imread(out / f"mask_tiny{index}.tif").shape == tifffile.imread(path).shape


def test_a_failing_rank_fails_every_rank_and_leaves_no_output(tmp_path, trained, project):
    good = tmp_path / "a_good.tif"
    tifffile.imwrite(good, tifffile.imread(project / "img0.tif"), tile=(32, 32))
    broken = tmp_path / "b_broken.tif"  # rank 1's image: opens, then fails while its tiles are read
    tifffile.imwrite(broken, np.full((300, 300), 100, np.uint8), tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(broken) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    data = bytearray(broken.read_bytes())
    data[offset:offset + count] = b"\xff" * count  # a truncated file would be refused when opened
    broken.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segkit.cli", "infer", "-r", str(trained), "--tta", "none", "--device", "cpu",
               "--rle", str(out / "ddp.csv"), "--mask", str(out / "mask_{id}.tif"), str(good), str(broken)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "rank 1:" in done.stdout + done.stderr
    assert list(out.iterdir()) == []
