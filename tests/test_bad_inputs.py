"""Bad input through the real CLI, as a table: one `Error:` (or `Warning:`) line naming the file or
key, the exit code, no traceback, and the project folder byte-for-byte unchanged (issue 10).

Every case runs in-process through click's CliRunner on one tiny project made once for the
module (two 90x133 TIFFs, a copy of the session's trained run, and a folder of bad files); the
errors are raised before training, so the table stays fast. The docs' bad-input page
(docs/bad-input.md) lists the same cases (test_docs_list_every_case keeps them in sync).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from click.testing import CliRunner
from conftest import HEIGHT, WIDTH, write_tiny_project

from segkit.cli import cli

# (what a user does wrong, command line, text the one line must contain, kind) - {root} is the project,
# {elsewhere} a folder outside it. kind: "error" (exit 1, `Error:`), or "warning" (exit 0, one `Warning:`
# line with the text; nothing written in the project).
TRAIN = "train --config {root}/tiny.yaml --epochs 1"
MANIFEST = TRAIN + " --set data.manifest={root}/"
STATS = "stats --config {root}/tiny.yaml --set data.manifest={root}/"
INFER = "infer --run {root}/runs/stage1 --rle {root}/out.csv"
FINETUNE = "finetune --config {root}/tiny.yaml --size 32 --run {root}/runs/"
PLAN = "plan --config {root}/tiny.yaml --out {elsewhere}/plan.yaml {root}/"
SUGGEST = "suggest --run {root}/runs/stage1 --out {root}/picks"
PSEUDO = "pseudo --run {root}/runs/stage1 --out {root}/pseudo {root}/img0.tif"
CASES = [
    # --- config keys and names, checked before any run directory exists
    ("unknown optimizer name", TRAIN + " --set train.optimizer=nope", "config key train.optimizer", "error"),
    ("unknown scheduler name", TRAIN + " --set train.scheduler=nope", "config key train.scheduler", "error"),
    ("unknown loss name", TRAIN + " --set 'train.loss=[{{name: nope}}]'", "config key train.loss", "error"),
    ("infer.threshold above 1", TRAIN + " --set infer.threshold=1.5", "config key infer.threshold", "error"),
    ("infer.threshold below 0", TRAIN + " --set infer.threshold=-0.2", "config key infer.threshold", "error"),
    ("margin leaving no tile", TRAIN + " --set infer.margin_px=24", "config key infer.margin_px", "error"),
    ("negative overlap", TRAIN + " --set infer.overlap_px=-1", "infer.overlap_px", "error"),
    ("network size 0", TRAIN + " --size 0", "config key data.size", "error"),
    ("unknown config key", TRAIN + " --set train.nope=1", "unknown config key train.nope", "error"),
    ("value of the wrong type", TRAIN + " --set train.lr=fast", "config key train.lr: expected float", "error"),
    ("misspelt config key", TRAIN + " --set data.sise=3", "unknown config key data.sise (did you mean 'data.size'?)",
     "error"),
    ("train.subset above 1", TRAIN + " --set train.subset=2", "config key train.subset", "error"),
    ("config file missing", "train --config {root}/nope.yaml", "nope.yaml", "error"),
    ("config file not YAML", "train --config {root}/bad/broken.yaml", "broken.yaml", "error"),
    ("existing run name", TRAIN + " --name stage1", "run directory exists", "error"),
    ("resume a finished run", "train --resume {root}/runs/stage1", "run has finished; nothing to resume", "error"),
    ("resume an unknown run", "train --config {root}/tiny.yaml --resume ghost", "ghost: no such run", "error"),
    ("resume from a truncated checkpoint", "train --resume {root}/runs/cut", "epoch_0002.pt", "error"),
    # --- manifests, images and labels (train, stats, preview)
    ("manifest missing", MANIFEST + "nope.csv", "nope.csv: manifest not found", "error"),
    ("manifest without an image column", MANIFEST + "bad/no_image_column.csv", "no_image_column.csv", "error"),
    ("image file missing", MANIFEST + "bad/m_missing.csv", "missing.tif", "error"),
    ("truncated TIFF image", MANIFEST + "bad/m_trunc.csv", "trunc.tif: truncated file", "error"),
    ("truncated TIFF image (stats)", STATS + "bad/m_trunc.csv", "trunc.tif: truncated file", "error"),
    ("truncated TIFF image (preview)", "preview --config {root}/tiny.yaml --out {root}/pv.png "
     "--set data.manifest={root}/bad/m_trunc.csv", "trunc.tif: truncated file", "error"),
    ("TIFF corrupt inside (bad tile data)", MANIFEST + "bad/m_corrupt.csv", "corrupt.tif: cannot read rows", "error"),
    ("not an image at all", MANIFEST + "bad/m_garbage.csv", "garbage.tif: cannot read image", "error"),
    ("truncated PNG", MANIFEST + "bad/m_trunc_png.csv", "trunc.png: cannot read image", "error"),
    ("4-D TIFF among 2-D images", MANIFEST + "bad/m_4d.csv", "four_d.tif: holds a 4-D image", "error"),
    ("(2,3,H,W) TIFF", MANIFEST + "bad/m_23.csv", "two3.tif: holds a 4-D image (2, 3, 90, 133)", "error"),
    ("RGBA PNG among 1-band images", MANIFEST + "bad/m_rgba.csv", "rgba.png: 4 band(s) (RGBA)", "error"),
    ("RGBA PNG as the first training image", MANIFEST + "bad/m_rgba_first.csv",
     "rgba.png: 4 band(s) (RGBA), but 2 of 3 images have 1", "error"),
    ("1x1 image", MANIFEST + "bad/m_one.csv", "one.tif: image is 1x1 px", "error"),
    ("truncated label TIFF", MANIFEST + "bad/m_trunc_label.csv", "trunc.tif: truncated file", "error"),
    ("label of another size", MANIFEST + "bad/m_small_label.csv", "small_mask.tif: label size", "error"),
    ("float label raster", MANIFEST + "bad/m_float_label.csv", "float_mask.tif: label raster has dtype", "error"),
    ("GeoJSON label not JSON", MANIFEST + "bad/m_bad_json.csv", "broken.geojson: not valid JSON", "error"),
    ("polygons outside the image", MANIFEST + "bad/m_far.csv", "far.geojson: all 1 polygons lie outside", "error"),
    ("all-background labels", STATS + "bad/m_empty.csv", "none of the 1 training rows has foreground", "warning"),
    ("image holding NaN", STATS + "bad/m_nan.csv", "nan.tif: NaN or infinite pixels, read as 0", "warning"),
    ("empty FeatureCollection", STATS + "bad/m_no_polygons.csv", "none.geojson: no polygons", "warning"),
    ("self-intersecting polygon", STATS + "bad/m_bowtie.csv", "bowtie.geojson: 1 invalid (self-intersecting) "
     "polygon(s) repaired with make_valid", "warning"),
    ("a stack of 20 planes", STATS + "bad/m_stack.csv", "stack.tif: 20 planes along axis Q (axes QYX) read as "
     "20 channels", "warning"),
    ("fold column leaving no validation rows", STATS + "bad/m_one_fold.csv", "validation fold 1 has no rows",
     "warning"),
    # --- finetune
    ("finetune from a tampered checkpoint", FINETUNE + "evil", "the checkpoint holds more than weights", "error"),
    ("finetune from a truncated checkpoint", FINETUNE + "cut --epoch last", "not a readable checkpoint", "error"),
    ("finetune from a checkpoint without weights", FINETUNE + "noweights",
     "epoch_0002.pt: not a segkit checkpoint (missing model)", "error"),
    ("finetune from an unknown run", FINETUNE + "nope", "nope: no such run", "error"),
    ("finetune from a missing epoch", FINETUNE + "stage1 --epoch 7",
     "--epoch 7: no checkpoint for epoch 7; available epochs: 1, 2", "error"),
    ("finetune from an epoch that is no number", FINETUNE + "stage1 --epoch soon",
     "--epoch 'soon': expected best, last or an epoch number", "error"),
    ("finetune changing the class count", FINETUNE + "stage1 --set model.classes=3",
     "parent run has model.classes=1 but this stage asks for 3", "error"),
    ("finetune changing the channels", FINETUNE + "stage1 --set 'data.channels=[{{band: 0}}, {{band: 0, window: [0, "
     "100]}}]'", "parent run has data.channels=None", "error"),
    ("finetune changing the field of view", FINETUNE + "stage1 --set data.fov_px=64", "field of view", "error"),
    ("finetune with an unknown loss", FINETUNE + "stage1 --set 'train.loss=[{{name: nope}}]'", "train.loss", "error"),
    # --- infer
    ("infer with an unknown run", "infer --run {root}/runs/no_such_run --rle {root}/x.csv {root}/img0.tif",
     "no_such_run: no such run", "error"),
    ("infer a truncated TIFF", INFER + " {root}/bad/trunc.tif", "trunc.tif: truncated file", "error"),
    ("infer a file that is no image", INFER + " {root}/bad/garbage.tif", "garbage.tif: cannot read image", "error"),
    ("infer a 4-D TIFF", INFER + " {root}/bad/four_d.tif", "four_d.tif: holds a 4-D image", "error"),
    ("infer an RGBA PNG with a 1-band run", INFER + " {root}/bad/rgba.png", "rgba.png: has 4 channel(s)", "error"),
    ("infer a missing image", INFER + " {root}/bad/missing.tif", "missing.tif: image file not found", "error"),
    ("infer with threshold 1.5", INFER + " --threshold 1.5 {root}/img0.tif", "infer.threshold", "error"),
    ("infer with overlap >= field of view", "infer --run {root}/runs/stage1 --rle {elsewhere}/o.csv --overwrite "
     "--overlap 48 {root}/img0.tif", "infer.overlap_px: 48 px is more than half the 48 px tile", "warning"),
    ("infer a truncated GeoTIFF (rasterio)", INFER + " --mask {root}/out_{{id}}.tif {root}/img0.tif "
     "{root}/bad/geo_trunc.tif", "geo_trunc.tif: cannot read rows", "error"),
    ("infer, second image corrupt mid-read", INFER + " --mask {root}/out_{{id}}.tif {root}/img0.tif "
     "{root}/bad/corrupt.tif", "corrupt.tif: cannot read rows", "error"),
    ("infer to an existing output", "infer --run {root}/runs/stage1 --rle {root}/manifest.csv {root}/img0.tif",
     "manifest.csv: exists (use --overwrite)", "error"),
    ("infer into a folder under a file", "infer --run {root}/runs/stage1 --rle {root}/manifest.csv/o.csv "
     "{root}/img0.tif", "manifest.csv: is a file, so the output folder", "error"),
    ("several images, one output path without an id", INFER + " --mask {root}/m.tif {root}/img0.tif {root}/img1.tif",
     "need '{{id}}'", "error"),
    ("infer with a tampered checkpoint", "infer --run {root}/runs/evil --rle {root}/o.csv {root}/img0.tif",
     "the checkpoint holds more than weights", "error"),
    ("infer with a run without checkpoints", "infer --run {root}/runs/empty --rle {root}/o.csv {root}/img0.tif",
     "no checkpoints", "error"),
    ("infer reading a training key", INFER + " --set train.lr=1 {root}/img0.tif", "--set train.lr", "error"),
    ("infer an unknown epoch", INFER + " --epochs 7 {root}/img0.tif", "no checkpoint for epoch 7", "error"),
    # --- suggest and pseudo
    ("suggest from a run without validation history", "suggest --run {root}/runs/noval --out {root}/picks "
     "{root}/img0.tif", "noval: no validation history", "error"),
    ("suggest on an image of another band count", SUGGEST + " {root}/bad/rgba.png", "rgba.png: has 4 channel(s)",
     "error"),
    ("suggest regions larger than the image", SUGGEST + " --region-size 100 {root}/img0.tif",
     "label.region_px 100 is larger than the image", "error"),
    ("suggest more regions than fit", SUGGEST + " --region-size 40 --regions 7 {root}/img0.tif",
     "label.regions 7: at most 6 regions of 40 px fit", "error"),
    ("pseudo threshold above 1", PSEUDO + " --high 1.5", "config key label.high", "error"),
    ("pseudo threshold below 0", PSEUDO + " --low -0.1", "config key label.low", "error"),
    ("pseudo thresholds crossing", PSEUDO + " --low 0.8 --high 0.6", "label.low (0.8) and label.high (0.6)",
     "error"),
    # --- plan and auto
    ("plan a manifest without labelled pixels", PLAN + "bad/m_empty.csv", "m_empty.csv: no labelled pixels", "error"),
    ("plan images of mixed band counts", PLAN + "bad/m_rgba.csv", "rgba.png: 4 band(s) uint8, but 1 of the 2", "error"),
    ("plan with a key no config has", PLAN + "manifest.csv --set data.nope=1", "unknown config key data.nope",
     "error"),
    ("auto with a budget too small for one epoch", "auto {root}/tiny.yaml --budget 0.01s",
     "--budget 0.01s is too small for one epoch", "error"),
    ("auto with a budget that is no time", "auto {root}/tiny.yaml --budget soon", "--budget 'soon'", "error"),
    ("auto --resume of a run auto did not plan", "auto --resume {root}/runs/stage1 --budget 1m",
     "stage1: no plan.yaml (not a segkit auto run", "error"),
    ("auto with DATA and --resume", "auto {root}/tiny.yaml --resume {root}/runs/stage1 --budget 1m",
     "tiny.yaml: give DATA or --resume RUN, not both", "error"),
    ("auto without DATA", "auto --budget 1m", "DATA: missing", "error"),
]


def _tree(root: Path) -> dict:
    """Every path under root with its content hash (checkpoints, 100+ MB each: inode, size and mtime,
    which any rewrite, atomic or not, changes)."""
    def state(path: Path):
        if not path.is_file():
            return "dir"
        st = path.stat()
        if st.st_size > 2**20:
            return (st.st_ino, st.st_size, st.st_mtime_ns)
        return hashlib.sha1(path.read_bytes()).hexdigest()

    return {str(p.relative_to(root)): state(p) for p in sorted(root.rglob("*"))}


def _manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _geojson(path: Path, rings: list) -> None:
    features = [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
                for ring in rings]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def corrupt_tile(src: Path, dst: Path, shape=(300, 300)) -> Path:
    """A tiled zlib TIFF whose last tile's bytes are garbage: it opens, and fails mid-read."""
    rng = np.random.default_rng(1)
    tifffile.imwrite(dst, rng.integers(0, 255, shape, dtype=np.uint8), tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(dst) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    data = bytearray(dst.read_bytes())
    data[offset:offset + count] = b"\xff" * count
    dst.write_bytes(bytes(data))
    return dst


def _truncated_geotiff(image: np.ndarray, path: Path) -> None:
    """A tiled GeoTIFF (read by rasterio: it has a CRS) cut in half: GDAL opens it, reads fail."""
    import rasterio
    from rasterio.transform import from_origin

    whole = path.with_name("geo_whole.tif")
    with rasterio.open(whole, "w", driver="GTiff", height=image.shape[0], width=image.shape[1], count=1,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1), tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate") as dataset:
        dataset.write(image, 1)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()


def write_bad_files(root: Path) -> None:
    """Every bad file of the table in root/bad, and manifests that put one of them in the second row."""
    bad = root / "bad"
    bad.mkdir()
    image, mask = tifffile.imread(root / "img0.tif"), tifffile.imread(root / "img0_mask.tif")
    data = (root / "img0.tif").read_bytes()
    (bad / "trunc.tif").write_bytes(data[: len(data) // 3])
    (bad / "garbage.tif").write_bytes(b"not an image " * 20)
    corrupt_tile(root / "img0.tif", bad / "corrupt.tif", (HEIGHT, WIDTH))
    tifffile.imwrite(bad / "four_d.tif", np.zeros((2, 2, HEIGHT, WIDTH), np.uint8))
    tifffile.imwrite(bad / "two3.tif", np.zeros((2, 3, HEIGHT, WIDTH), np.uint8))
    import cv2

    cv2.imwrite(str(bad / "rgba.png"), np.full((HEIGHT, WIDTH, 4), 50, np.uint8))
    cv2.imwrite(str(bad / "gray.png"), image)
    png = (bad / "gray.png").read_bytes()
    (bad / "trunc.png").write_bytes(png[:200])
    tifffile.imwrite(bad / "one.tif", np.zeros((1, 1), np.uint8))
    tifffile.imwrite(bad / "nan.tif", np.where(mask > 0, np.nan, image.astype(np.float32)).astype(np.float32))
    tifffile.imwrite(bad / "empty_mask.tif", np.zeros_like(mask))
    tifffile.imwrite(bad / "small_mask.tif", mask[:50, :60])
    tifffile.imwrite(bad / "float_mask.tif", mask.astype(np.float32))
    (bad / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    _geojson(bad / "far.geojson", [[[500, 500], [520, 500], [520, 520], [500, 500]]])
    _geojson(bad / "none.geojson", [])
    _geojson(bad / "bowtie.geojson", [[[10, 10], [40, 40], [40, 10], [10, 40], [10, 10]]])
    (bad / "broken.yaml").write_text("train: [unclosed\n")
    _truncated_geotiff(image, bad / "geo_trunc.tif")

    base = [{"id": "img0", "image": str(root / "img0.tif"), "label": str(root / "img0_mask.tif"), "fold": 0},
            {"id": "img1", "image": str(root / "img1.tif"), "label": str(root / "img1_mask.tif"), "fold": 1}]

    def variant(name, first=None, **second):
        rows = [dict(base[0], **(first or {})), dict(base[1], **second)]
        _manifest(bad / name, rows)

    variant("m_missing.csv", image=str(bad / "missing.tif"))
    variant("m_trunc.csv", {"image": str(bad / "trunc.tif")})  # a training row: stats and preview read it
    variant("m_corrupt.csv", {"image": str(bad / "corrupt.tif")})
    variant("m_garbage.csv", image=str(bad / "garbage.tif"))
    variant("m_trunc_png.csv", image=str(bad / "trunc.png"))
    variant("m_4d.csv", image=str(bad / "four_d.tif"))
    variant("m_23.csv", image=str(bad / "two3.tif"))
    variant("m_rgba.csv", image=str(bad / "rgba.png"))
    variant("m_one.csv", image=str(bad / "one.tif"))
    _manifest(bad / "m_rgba_first.csv", [dict(base[0], id="rgba", image=str(bad / "rgba.png")), base[0],
                                         dict(base[1], fold=0), dict(base[1], id="img1b")])
    variant("m_trunc_label.csv", label=str(bad / "trunc.tif"))
    variant("m_small_label.csv", label=str(bad / "small_mask.tif"))
    variant("m_float_label.csv", label=str(bad / "float_mask.tif"))
    variant("m_bad_json.csv", label=str(bad / "broken.geojson"))
    variant("m_far.csv", {"label": str(bad / "far.geojson")})
    variant("m_empty.csv", {"label": str(bad / "empty_mask.tif")}, label=str(bad / "empty_mask.tif"))
    variant("m_nan.csv", {"image": str(bad / "nan.tif")}, image=str(bad / "nan.tif"))  # one dtype in a manifest
    variant("m_no_polygons.csv", label=str(bad / "none.geojson"))
    variant("m_bowtie.csv", {"label": str(bad / "bowtie.geojson")})
    variant("m_one_fold.csv", fold=0)
    tifffile.imwrite(bad / "stack.tif", np.stack([image] * 20))
    variant("m_stack.csv", {"image": str(bad / "stack.tif")}, image=str(bad / "stack.tif"))
    (bad / "no_image_column.csv").write_text("id,label\nimg0,img0_mask.tif\n")


def write_bad_runs(runs: Path, trained: Path) -> None:
    """stage1 (a copy of the session's trained run), evil (checkpoints holding code), cut (last
    checkpoint truncated, status interrupted), empty (no checkpoints), noval (no validation scores),
    noweights (checkpoints without model weights)."""
    for name in ("stage1", "evil", "cut", "empty", "noval", "noweights"):
        shutil.copytree(trained, runs / name, copy_function=os.link)  # rewritten files below are replaced
        info = json.loads((runs / name / "run.json").read_text())
        if name != "stage1":
            info.update(status="interrupted", pid=None)
            (runs / name / "run.json").unlink()  # a hard link to the trained run's: replace, never write through
            (runs / name / "run.json").write_text(json.dumps(info))
    for path in (runs / "evil" / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state["hook"] = os.getcwd  # a global: loading it would run code
        path.unlink()
        torch.save(state, path)
    for path in (runs / "noweights" / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        del state["model"]
        path.unlink()
        torch.save(state, path)
    last = sorted((runs / "cut" / "checkpoints").glob("*.pt"))[-1]
    data = last.read_bytes()[:1000]
    last.unlink()
    last.write_bytes(data)
    for path in (runs / "empty" / "checkpoints").glob("*.pt"):
        path.unlink()
    metrics = runs / "noval" / "metrics.jsonl"
    records = [{k: v for k, v in json.loads(line).items() if not k.startswith("val_")}
               for line in metrics.read_text().splitlines() if line.strip()]
    metrics.unlink()
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def world(module_tmp, trained):
    root = write_tiny_project(module_tmp("bad_inputs"))
    write_bad_files(root)
    (root / "runs").mkdir()
    write_bad_runs(root / "runs", trained)
    return root


def run_cli(line: str, root: Path):
    import shlex

    elsewhere = root.with_name(root.name + "_out")
    elsewhere.mkdir(exist_ok=True)
    return CliRunner().invoke(cli, shlex.split(line.format(root=root, elsewhere=elsewhere)))


@pytest.mark.parametrize("what, line, expected, kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, what, line, expected, kind):
    before = _tree(world)
    result = run_cli(line, world)
    after = _tree(world)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.output
    if kind == "error":
        assert result.exit_code == 1, result.output
        assert lines == [lines[0]] and lines[0].startswith("Error: "), result.output
        assert expected.format() in lines[0], result.output
    else:
        assert result.exit_code == 0, result.output
        warned = [line for line in lines if line.startswith("Warning: ")]
        assert len(warned) == 1 and expected.format() in warned[0], result.output
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_table_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def docs_rows() -> list[str]:
    """The docs table rows of CASES (`python tests/test_bad_inputs.py` prints them)."""
    return [f"| {what} | `{expected.format()}` | {kind} |" for what, _, expected, kind in CASES]


def test_docs_list_every_case():
    """docs/bad-input.md's table has one row per case, in this order, with the line the user gets."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "bad-input.md").read_text()
    rows = [line for line in page.splitlines() if re.fullmatch(r"\| .+ \| `.+` \| (error|warning) \|", line)]
    assert rows == docs_rows()


if __name__ == "__main__":
    print("\n".join(docs_rows()))
