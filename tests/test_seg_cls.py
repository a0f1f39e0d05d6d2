"""--task seg+cls: one smp model trains both heads on window masks and tile classes; infer.cls_gate skips
exactly the tiles whose "empty" probability passes the gate and changes nothing where no tile was gated."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import write_tiny_project
from segkit.cli import cli
from segkit.data.preprocess import Preprocess
from segkit.data.windows import grid_windows
from segkit.ground.config import load_config
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.gate import GatedPredictor, head_logits
from segkit.infer.predict import predict_probs
from segkit.io.images.raster import open_raster
from segkit.models.factory import create_model
from segkit.runs.checkpoint import list_checkpoints, load_checkpoint


@pytest.fixture(scope="module")
def seg_cls_run(module_tmp):
    root = write_tiny_project(module_tmp("segcls"), data={"cls_from_mask": 40},
                              train={"epochs": 2, "cls_loss": [{"name": "ce", "weight": 0.5}]})
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--task", "seg+cls",
                                      "--name", "sc"])
    assert result.exit_code == 0, result.output
    return root, root / "runs" / "sc"


def test_both_heads_train_with_the_weighted_sum_of_both_losses(seg_cls_run):
    _, run = seg_cls_run
    config = load_config(run / "config.yaml")
    assert config.task == "seg+cls"
    torch.manual_seed(config.run.seed)
    initial = create_model(config.model.arch, config.model.encoder, None, in_channels=1, classes=1,
                           task="seg+cls").state_dict()
    trained = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["model"]
    for head in ("classification_head.", "segmentation_head."):
        keys = [k for k in trained if k.startswith(head) and trained[k].is_floating_point()]
        assert keys and any(not torch.equal(trained[k], initial[k]) for k in keys), head
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_seg_dice", "loss_seg_soft_bce", "loss_cls_ce", "val_dice"} <= set(record)


class Recording(GatedPredictor):
    def __call__(self, x):
        probs, kept = super().__call__(x)
        self.kept = getattr(self, "kept", []) + kept.tolist()
        return probs, kept


def test_the_gate_skips_exactly_the_gated_tiles(seg_cls_run):
    root, run = seg_cls_run
    config = load_config(run / "config.yaml")
    model = create_model(config.model.arch, config.model.encoder, None, in_channels=1, classes=1, task="seg+cls")
    model.load_state_dict(load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["model"])
    model.eval()
    preprocess = Preprocess.load(run / "preprocess.json")
    raster = open_raster(root / "img1.tif")
    fov, size, overlap = 48, 32, 16
    windows = grid_windows(raster.height, raster.width, fov, overlap)
    tiles = np.stack([preprocess(raster.read(w, out_size=(size, size))) for w in windows]).transpose(0, 3, 1, 2)
    with torch.no_grad():  # each tile's "empty" probability, one tile at a time
        empty = np.array([float(torch.softmax(head_logits(model, torch.from_numpy(t[None]).float()), 1)[0, 0])
                          for t in tiles])
    gate = float(np.median(empty))
    expected = empty < gate
    assert 0 < expected.sum() < len(windows)

    common = dict(fov_px=fov, size=size, overlap_px=overlap, preprocess=preprocess, batch_size=4)
    plain = predict_probs(EnsemblePredictor([(model, 1.0)], "none"), raster, **common)
    recording = Recording([(model, 1.0)], "none", gate=gate, classes=1)
    gated = predict_probs(recording, raster, **common)
    assert recording.kept == expected.tolist() and recording.gated == int((~expected).sum())

    kept_cover = np.zeros(plain.shape[1:], bool)
    gated_cover = np.zeros(plain.shape[1:], bool)
    for w, keep in zip(windows, expected):
        (kept_cover if keep else gated_cover)[w.row:w.bottom, w.col:w.right] = True
    only_kept = kept_cover & ~gated_cover
    assert only_kept.any() and np.allclose(gated[0][only_kept], plain[0][only_kept], atol=1e-6)
    only_gated = gated_cover & ~kept_cover
    assert only_gated.any() and not gated[0][only_gated].any()  # background, not blended
    assert not np.allclose(plain[0][only_gated], 0)


def test_infer_with_the_gate_through_the_cli(seg_cls_run, tmp_path):
    root, run = seg_cls_run
    args = ["infer", str(root / "img1.tif"), "--run", str(run), "--mask", str(tmp_path / "{}.tif")]
    for name, gate in (("off", []), ("on", ["--set", "infer.cls_gate=0.01"])):
        argv = [a.replace("{}", name) for a in args] + gate
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 0, result.output
    import tifffile

    off, on = tifffile.imread(tmp_path / "off.tif"), tifffile.imread(tmp_path / "on.tif")
    assert off.shape == on.shape == (90, 133) and off.any() and not on.any()  # a gate of 0.01 gates every tile
