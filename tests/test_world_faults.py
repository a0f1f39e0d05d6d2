"""Faults of the world through the CLI: full disks, vanished folders, decompression bombs, alias
bombs, two processes on one run, and the last silently wrong inputs.

The table FAULT_CASES runs like tests/test_bad_inputs.py's (its `world` project and checks: one
`Error:`/`Warning:` line, exit code, no traceback, the project folder unchanged); docs/faults.md
lists the same rows (test_docs_list_every_case). The other tests need a process, a mount or a
lock of their own. A full disk is a real tmpfs where the test may mount one (root with
CAP_SYS_ADMIN), else the write raises ENOSPC the way the kernel would.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from conftest import write_tiny_project
from test_bad_inputs import _manifest, _tree, run_cli, world  # noqa: F401 - world is a fixture

from segkit.cli import cli
from segkit.ground.errors import SegkitError
from segkit.runs.checkpoint import load_checkpoint

ENV = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
TRAIN = "train --config {root}/tiny.yaml --epochs 1"
MANIFEST = TRAIN + " --set data.manifest={root}/faults/"
FINETUNE = "finetune --config {root}/tiny.yaml --size 32 --run {root}/runs/"
FAULT_CASES = [
    ("RGBA PNG training image, 1-band validation TIFF", MANIFEST + "m_rgba_train.csv",
     "rgba.png: 4 band(s) (RGBA), but 1 of 2 images have 1", "error"),
    ("uint16 training image, uint8 validation image", MANIFEST + "m_mixed_dtype.csv",
     "img1.tif: dtype uint8, but 1 of 2 images have uint16 (e.g.", "error"),
    ("polygon with NaN coordinates", MANIFEST + "m_nan_polygon.csv",
     "nan_polygon.geojson: polygon 0 has coordinates that are not finite numbers", "error"),
    ("PNG declaring 20000 x 20000 px", MANIFEST + "m_png_bomb.csv",
     "bomb.png: the whole image of 20000 x 20000 px (400 Mpx) would be decoded in one piece", "error"),
    ("JPEG declaring 60000 x 60000 px", MANIFEST + "m_jpeg_bomb.csv",
     "bomb.jpg: the whole image of 60000 x 60000 px", "error"),
    ("TIFF declaring one 100000 x 100000 px tile", MANIFEST + "m_tiff_bomb.csv",
     "tile_bomb.tif: one tile of 100000 x 100000 px", "error"),
    ("GeoJSON nested 100000 levels deep", MANIFEST + "m_deep_json.csv",
     "deep.geojson: JSON nested too deeply to be a GeoJSON", "error"),
    ("YAML alias bomb (9 levels of 9 aliases)", "train --config {root}/faults/bomb.yaml",
     "bomb.yaml: not valid YAML (more than 100000 values once its aliases are expanded", "error"),
    ("YAML alias bomb in --set", TRAIN + " --set 'data.group_pattern=[&a [x,x,x,x,x,x,x,x,x,x], "
     "&b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], "
     "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]'",
     "--set data.group_pattern: value", "error"),
    ("recursive YAML alias", "train --config {root}/faults/recursive.yaml", "recursive alias", "error"),
    ("finetune from a truncated checkpoint (whole first sentence)", FINETUNE + "cut --epoch last",
     "not a readable checkpoint (truncated or foreign file): PytorchStreamReader failed reading zip archive: "
     "failed finding central directory", "error"),
]


def _png_declaring(path: Path, height: int, width: int) -> None:
    """A 10x10 PNG whose header (CRC fixed) declares height x width: what a decompression bomb looks like."""
    cv2.imwrite(str(path), np.zeros((10, 10), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _jpeg_declaring(path: Path, height: int, width: int) -> None:
    cv2.imwrite(str(path), np.zeros((10, 12, 3), np.uint8))
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), then height, width
    data[at:at + 4] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    defs = ["&a0 [" + ", ".join(['"lol"'] * width) + "]"]
    defs += [f"&a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]" for k in range(1, levels)]
    return "data:\n  group_pattern: [" + ", ".join(defs) + "]\n"


@pytest.fixture(scope="module")
def faults(world):  # noqa: F811 - the fixture imported above
    """world plus this table's bad files in world/faults."""
    root, bad = world, world / "faults"
    bad.mkdir(exist_ok=True)
    image = tifffile.imread(root / "img0.tif")
    base = [{"id": "img0", "image": str(root / "img0.tif"), "label": str(root / "img0_mask.tif"), "fold": 0},
            {"id": "img1", "image": str(root / "img1.tif"), "label": str(root / "img1_mask.tif"), "fold": 1}]
    cv2.imwrite(str(bad / "rgba.png"), np.full((*image.shape, 4), 50, np.uint8))
    _manifest(bad / "m_rgba_train.csv", [dict(base[0], image=str(bad / "rgba.png")), base[1]])
    tifffile.imwrite(bad / "img0_16.tif", image.astype(np.uint16) * 150 + 3000)
    _manifest(bad / "m_mixed_dtype.csv", [dict(base[0], image=str(bad / "img0_16.tif")), base[1]])
    ring = [[10, 10], [float("nan"), 10], [40, 40], [10, 10]]
    (bad / "nan_polygon.geojson").write_text(json.dumps({"type": "Feature", "properties": {},
                                                        "geometry": {"type": "Polygon", "coordinates": [ring]}}))
    _manifest(bad / "m_nan_polygon.csv", [dict(base[0], label=str(bad / "nan_polygon.geojson")), base[1]])
    _png_declaring(bad / "bomb.png", 20000, 20000)
    _manifest(bad / "m_png_bomb.csv", [base[0], dict(base[1], image=str(bad / "bomb.png"))])
    _jpeg_declaring(bad / "bomb.jpg", 60000, 60000)
    _manifest(bad / "m_jpeg_bomb.csv", [base[0], dict(base[1], image=str(bad / "bomb.jpg"))])
    tifffile.imwrite(bad / "tile_bomb.tif", np.zeros((64, 64), np.uint8), tile=(32, 32))
    _tile_size(bad / "tile_bomb.tif", 100000)
    _manifest(bad / "m_tiff_bomb.csv", [base[0], dict(base[1], image=str(bad / "tile_bomb.tif"))])
    (bad / "deep.geojson").write_text('{"type": "FeatureCollection", "features": ' + "[" * 10**5 + "]" * 10**5 + "}")
    _manifest(bad / "m_deep_json.csv", [base[0], dict(base[1], label=str(bad / "deep.geojson"))])
    (bad / "bomb.yaml").write_text(_alias_bomb())
    (bad / "recursive.yaml").write_text("data: &a\n  group_pattern: [*a]\n")
    return root


def _tile_size(path: Path, side: int) -> None:
    """Rewrite the TileWidth/TileLength tags (322, 323) of a small tiled TIFF in place."""
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[0].tags[code].valueoffset for code in (322, 323)]
        kinds = [tif.pages[0].tags[code].dtype for code in (322, 323)]
    data = bytearray(path.read_bytes())
    for offset, kind in zip(offsets, kinds):
        fmt = "<H" if kind == 3 else "<I"
        data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, side)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what, line, expected, kind", FAULT_CASES, ids=[c[0] for c in FAULT_CASES])
def test_fault(faults, what, line, expected, kind):
    before = _tree(faults)
    result = run_cli(line, faults)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and not isinstance(result.exception, MemoryError), result.output
    assert result.exit_code == 1 and lines == [lines[0]] and lines[0].startswith("Error: "), result.output
    assert expected in lines[0], result.output
    assert len(lines[0]) < 600, lines[0]  # bounded, whatever the input held
    assert _tree(faults) == before


def test_polygon_file_above_the_limit_is_refused_before_parsing(faults, monkeypatch):
    monkeypatch.setenv("SEGKIT_MAX_VECTOR_BYTES", "100")
    big = faults / "faults" / "big.geojson"
    ring = [[10 + i % 30, 10 + i // 30] for i in range(60)] + [[10, 10]]
    big.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                                               "coordinates": [ring]}}))
    from segkit.io.labels.masks import open_labels
    from segkit.io.images.raster import open_raster

    with pytest.raises(SegkitError, match=r"big.geojson: \d+ bytes of polygons, above the 100 bytes segkit parses in memory "
                                          r"\(SEGKIT_MAX_VECTOR_BYTES\)"):
        open_labels(str(big), open_raster(faults / "img0.tif"))
    big.unlink()


def docs_rows() -> list[str]:
    return [f"| {what} | `{expected}` | {kind} |" for what, _, expected, kind in FAULT_CASES]


def test_docs_list_every_case():
    """docs/faults.md's table of these cases, in this order (`python tests/test_world_faults.py` prints it)."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    rows = [line for line in docs.splitlines() if re.fullmatch(r"\| .+ \| `.+` \| (error|warning) \|", line)]
    assert rows == docs_rows()


# ------------------------------------------------------------------ defaults that fit the run


def test_default_overlap_fits_small_tiles_and_an_explicit_one_still_warns(trained, project, tmp_path):
    from segkit.infer.predict import default_overlap_px

    assert [default_overlap_px(c) for c in (16, 48, 128, 256, 512, 1024)] == [4, 12, 32, 64, 64, 64]
    args = ["infer", "--run", str(trained), "--rle", str(tmp_path / "a.csv"), str(project / "img0.tif")]
    quiet = CliRunner().invoke(cli, args + ["--set", "infer.overlap_px=null"])
    assert quiet.exit_code == 0 and "Warning" not in quiet.output, quiet.output
    args[4] = str(tmp_path / "b.csv")
    loud = CliRunner().invoke(cli, args + ["--overlap", "40"])
    assert loud.exit_code == 0 and "infer.overlap_px: 40 px is more than half the 48 px tile" in loud.output


# ------------------------------------------------------------------ one process per run


def _resumable_copy(trained: Path, runs: Path) -> Path:
    """A copy of the session's run marked interrupted after epoch 1 (epoch 2 to do)."""
    run = runs / "r"
    shutil.copytree(trained, run, copy_function=os.link)
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    info = json.loads((run / "run.json").read_text())
    info.update(status="interrupted", pid=None, last_epoch=1)
    (run / "run.json").unlink()
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_second_resume_is_refused_while_the_first_holds_the_run(tmp_path, trained):
    from segkit.runs.lock import lock_run, release_run

    run = _resumable_copy(trained, tmp_path / "runs")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from segkit.runs.lock import lock_run; "
                               f"lock_run({str(run)!r}); print('held', flush=True); time.sleep(60)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(run)
        result = CliRunner().invoke(cli, ["train", "--resume", str(run)])
        assert result.exit_code == 1, result.output
        assert result.output.strip() == (f"Error: {run.resolve()}: run is in use by another segkit process "
                                          f"(pid {holder.pid} on {os.uname().nodename}); wait for it to end or "
                                          "stop it before resuming")
        assert _tree(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder: the kernel drops its lock
        holder.wait()
    assert lock_run(run)  # free again, nothing to clean up
    release_run(run)


# ------------------------------------------------------------------ full disk, vanished folders


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a size-limited tmpfs (256 MiB: one tiny-model checkpoint fits, two do not); None
    where this process may not mount (the test then makes the write raise ENOSPC)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_on_second_checkpoint(monkeypatch):
    """Without a mount: the second checkpoint write gets as far as the kernel would, then ENOSPC."""
    import segkit.runs.checkpoint as ckpt

    real, calls = torch.save, []

    def save(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(state, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)


def test_full_disk_mid_training_is_one_line_and_the_run_resumes(tmp_path, small_disk, monkeypatch):
    root = write_tiny_project(tmp_path / "p", train={"epochs": 2})
    runs = (small_disk or tmp_path) / "runs"
    if small_disk is None:
        _fill_on_second_checkpoint(monkeypatch)
    args = ["train", "--config", str(root / "tiny.yaml"), "--name", "r", "--runs-dir", str(runs)]
    result = CliRunner().invoke(cli, args)
    run = runs / "r"
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    error = [line for line in lines if line.startswith("Error: ")]
    assert error == [lines[-1]] and "Traceback" not in result.output, result.output
    assert f"{run}/checkpoints/epoch_0002.pt: cannot write it: no space left on device" in error[0], error[0]
    assert f"last good checkpoint {run}/checkpoints/epoch_0001.pt" in error[0], error[0]
    assert sorted(p.name for p in run.rglob("*") if p.is_file() and ".tmp" in p.name) == []
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch_0001.pt"]
    assert load_checkpoint(run / "checkpoints" / "epoch_0001.pt", required_keys=("model",))["epoch"] == 1
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] in ([1], [1, 2])
    monkeypatch.undo()
    if small_disk is not None:  # space freed
        subprocess.run(["mount", "-o", "remount,size=640m", str(small_disk)], check=True)
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]


@pytest.mark.parametrize("fault", ["ENOSPC", "EDQUOT", "EROFS"])
def test_disk_errors_of_any_writer_name_the_final_path(tmp_path, fault):
    """What the kernel says (errno), for the text writers (RLE CSV, GeoJSON, metrics.jsonl): one line,
    the previous file kept, no temporary file."""
    target = tmp_path / "sub.csv"
    target.write_text("id,rle\nold,1 2\n")
    code = getattr(errno, fault)

    class Failing:
        def write(self, text):
            raise OSError(code, os.strerror(code))

    from segkit.io.atomic import atomic_path

    with pytest.raises(SegkitError) as caught:
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("id,rle\nnew,")
            Failing().write("3 4")
    assert str(caught.value).startswith(f"{target}: cannot write it: ") and "the previous file is kept" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"] and target.read_text() == "id,rle\nold,1 2\n"


def test_file_size_limit_in_a_subprocess_names_the_path(tmp_path):
    """RLIMIT_FSIZE (ulimit -f): torch and tifffile fail in their own words; segkit says which file and why."""
    script = f"""
import resource, signal, sys, numpy as np, torch
from segkit.io.atomic import write_text
from segkit.runs.checkpoint import save_checkpoint
from segkit.ground.errors import SegkitError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))
for name, write in [("ckpt.pt", lambda p: save_checkpoint(p, {{"w": torch.zeros(2**19)}})),
                    ("text.csv", lambda p: write_text(p, "x" * 2**21))]:
    try:
        write(r"{tmp_path}/" + name)
    except SegkitError as exc:
        print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines == [f"{tmp_path}/ckpt.pt: cannot write it: file too large for this process (ulimit -f); "
                     "nothing written under that name",
                     f"{tmp_path}/text.csv: cannot write it: file too large for this process (ulimit -f); "
                     "nothing written under that name"], done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def test_read_only_output_folder_is_one_line(tmp_path, trained, project):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):  # root ignores the mode: make it a read-only bind mount instead
            if subprocess.run(["mount", "--bind", "-o", "ro", str(out), str(out)], capture_output=True).returncode:
                pytest.skip("cannot make a read-only folder as this user")
            subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=False)
        result = CliRunner().invoke(cli, ["infer", "--run", str(trained), "--rle", str(out / "s.csv"),
                                          str(project / "img0.tif")])
        assert result.exit_code == 1, result.output
        assert result.output.strip().startswith(f"Error: {out}: output folder is not writable"), result.output
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)
        out.chmod(0o755)


def test_runs_folder_deleted_while_training_is_one_line(tmp_path, monkeypatch):
    import segkit.train.stage as stage

    root = write_tiny_project(tmp_path / "p", train={"epochs": 2})
    real = stage.record_epoch

    def delete_then_record(run_dir, record):
        shutil.rmtree(run_dir.parent)  # the whole runs folder, as `rm -rf runs` from another shell
        return real(run_dir, record)

    monkeypatch.setattr(stage, "record_epoch", delete_then_record)
    result = CliRunner().invoke(cli, ["train", "--config", str(root / "tiny.yaml"), "--name", "r"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (f"Error: {root / 'runs' / 'r'}: the run directory "
                                                      "disappeared while training (deleted or moved?); stopped")
    assert not (root / "runs").exists()  # not silently re-created


# ------------------------------------------------------------------ temporary files, bounded messages


def test_resume_removes_stale_temps_anywhere_in_its_run(tmp_path):
    from segkit.runs.rundir import remove_stale_run_temps

    run = tmp_path / "runs" / "r"
    (run / "eval" / "deep").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [run / "eval" / "deep" / f".report.html.{dead}.ab.tmp", run / f".metrics.jsonl.{dead}.cd.tmp"]
    for path in stale:
        path.write_text("half")
    assert sorted(remove_stale_run_temps(tmp_path / "runs", run)) == sorted(stale)


def test_first_sentence_never_cuts_mid_word():
    from segkit.ground.text import first_sentence

    torch_text = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
                  "internal miniz error. If you are seeing this error ...")
    assert first_sentence(torch_text) == "PytorchStreamReader failed reading zip archive: failed finding central directory"
    long = "word " * 100
    cut = first_sentence(long, limit=50)
    assert cut.endswith(" ...") and len(cut) <= 54 and not cut[:-4].endswith("wor")


def test_alias_bomb_is_refused_fast_with_bounded_memory():
    import resource

    import yaml

    from segkit.ground.safeyaml import safe_load

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(yaml.YAMLError, match="alias bomb"):
        safe_load(_alias_bomb())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing expanded
    assert safe_load("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # ordinary aliases still work


if __name__ == "__main__":
    print("\n".join(docs_rows()))


# ------------------------------------------------------------------ several processes on one store


_WORKER = """
import sys, optuna
from segkit.tune.optuna import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(sys.argv[1])
study = optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=int(sys.argv[2]))
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_study_workers_at_once_lose_no_trial(tmp_path, kind):
    """Two processes optimizing one study through segkit's storage at the same moment: no "database is
    locked", every trial of both recorded and complete."""
    optuna = pytest.importorskip("optuna")
    from segkit.tune.optuna import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else str(tmp_path / "study.log")
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, url, "15"], env=ENV, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).trials
    assert len(trials) == 30 and {t.state.name for t in trials} == {"COMPLETE"}


def test_stale_trial_is_failed_once_when_two_workers_start_together(tmp_path):
    optuna = pytest.importorskip("optuna")
    from segkit.tune.optuna import _fail_stale_trials, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("host", os.uname().nodename)
    trial.set_user_attr("pid", subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                              capture_output=True, text=True).stdout.strip())
    other = optuna.load_study(study_name="s", storage=storage)  # the second worker's view, loaded before
    assert _fail_stale_trials(study) == 1
    assert _fail_stale_trials(other) == 0  # it finds the trial already failed: no second copy queued
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["FAIL", "WAITING"]


_TRACKER = """
import sys
import time
from pathlib import Path
from segkit.train.tracking import check_tracking, create_tracker
uri, runs = sys.argv[1], Path(sys.argv[2])
check_tracking("mlflow", tracking_uri=uri, experiment="segkit", runs_dir=runs)
tracker = create_tracker("mlflow", runs / sys.argv[3], tracking_uri=uri, experiment="segkit", params={"a": 1})
for epoch in (1, 2, 3):
    tracker(runs / sys.argv[3], {"epoch": epoch, "train_loss": 1.0 / epoch})
tracker.finish("finished")
"""


def test_two_mlflow_runs_create_and_write_one_sqlite_store_at_once(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    runs.mkdir()
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", _TRACKER, uri, str(runs), name], env=ENV,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])
    assert sorted(r.info.run_name for r in found) == ["a", "b"]
    assert all(len(client.get_metric_history(r.info.run_id, "train_loss")) == 3 for r in found)


# ------------------------------------------------------------------ slow: real runs side by side


@pytest.mark.slow
def test_two_resumes_of_one_killed_run_exactly_one_proceeds(tmp_path):
    root = write_tiny_project(tmp_path / "p", train={"epochs": 4})
    command = [sys.executable, "-m", "segkit.cli", "train", "--config", str(root / "tiny.yaml"), "--name", "r"]
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = root / "runs" / "r"
    while not (run / "checkpoints" / "epoch_0001.pt").exists():
        assert first.poll() is None, first.stdout.read().decode()
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    resume = [sys.executable, "-m", "segkit.cli", "train", "--resume", str(run)]
    both = [subprocess.Popen(resume, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0].decode() for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 1], outputs
    loser = outputs[[p.returncode for p in both].index(1)].strip().splitlines()
    assert loser == [loser[0]] and "run is in use by another segkit process" in loser[0], loser
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_tune_workers_on_one_sqlite_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    root = write_tiny_project(tmp_path / "p", train={"epochs": 1}, infer={"tta": "none"})
    (root / "space.yaml").write_text("train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    args = [sys.executable, "-m", "segkit.cli", "tune", "--config", str(root / "tiny.yaml"), "--space",
            str(root / "space.yaml"), "--trials", "4", "--no-prune"]
    workers = [subprocess.Popen(args, cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for _ in range(2)]
    outputs = [w.communicate(timeout=1800)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert not any("locked" in out or "Traceback" in out for out in outputs), outputs
    trials = optuna.load_study(study_name="tune", storage=f"sqlite:///{root / 'runs' / 'optuna.db'}").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4 and all((Path(t.user_attrs["run_dir"]) / "run.json").exists() for t in complete)
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)  # every trial its own run


def test_full_disk_under_sqlite_is_one_line(tmp_path):
    """Optuna's SQLite study on a full (1 MiB tmpfs) disk: the library's error chain becomes the CLI's one line."""
    optuna = pytest.importorskip("optuna")
    from segkit.io.atomic import disk_error_line
    from segkit.tune.optuna import open_storage

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs as this user")
    try:
        storage = open_storage(f"sqlite:///{mount / 'optuna.db'}")
        study = optuna.create_study(study_name="s", storage=storage)
        with pytest.raises(Exception) as caught:
            for _ in range(100000):
                study.enqueue_trial({"x": 0.5}, user_attrs={"pad": "x" * 4000})
        assert disk_error_line(caught.value) == ("a SQLite database (the Optuna study or the MLflow store): database "
                                                 "or disk is full; free space and run the command again (it resumes)")
        assert disk_error_line(ValueError("unrelated")) is None
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_oof_after_a_kill_trains_only_the_missing_folds(tmp_path, digits):
    """oof killed during fold 1 (its epoch 2 lost), fold 2 never started: the next oof leaves fold 0
    untouched, resumes fold 1 from its epoch 1 and trains fold 2."""
    import yaml

    from test_cls_cli import _digest

    config = {"task": "cls", "run": {"runs_dir": str(tmp_path / "runs"), "progress": False},
              "data": {"manifest": str(digits / "train.csv"), "size": 16, "fold_method": "stratified",
                       "stats_windows": 8},
              "model": {"encoder": "tu-resnet10t"}, "train": {"epochs": 2, "batch_size": 8, "amp": False}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(config))
    args = ["oof", "--config", str(tmp_path / "cls.yaml"), "--folds", "3", "--name", "o", "--out", str(tmp_path / "o.csv")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    runs = tmp_path / "runs"
    (tmp_path / "o.csv").unlink()
    shutil.rmtree(runs / "o-fold2")  # never started
    fold1 = runs / "o-fold1"  # killed in its second epoch
    (fold1 / "checkpoints" / "epoch_0002.pt").unlink()
    info = json.loads((fold1 / "run.json").read_text())
    info.update(status="running", pid=999999999, last_epoch=1)
    (fold1 / "run.json").write_text(json.dumps(info))
    kept = _digest(runs / "o-fold0")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert _digest(runs / "o-fold0") == kept
    assert [json.loads(line)["epoch"] for line in (fold1 / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((runs / "o-fold2" / "run.json").read_text())["status"] == "finished"
