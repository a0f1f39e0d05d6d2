from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, normalise_weights
from segkit.infer.ensemble import predict_batch
from segkit.infer.predict import predict_probs, predict_strips
from segkit.io.images.raster import open_raster
from segkit.runs.checkpoint import select_checkpoints


class ArrayRaster:
    """In-memory stand-in with the Raster API: read(window, out_size) -> HWC raw, zero padded."""

    def __init__(self, image):
        self.image = image if image.ndim == 3 else image[:, :, None]
        self.height, self.width, self.channels = self.image.shape
        self.dtype = self.image.dtype
        self.path = "mem.tif"
        self.reads = 0

    def read(self, window, out_size=None):
        self.reads += 1
        out = np.zeros((window.height, window.width, self.channels), self.dtype)
        r0, c0 = max(window.row, 0), max(window.col, 0)
        r1, c1 = min(window.bottom, self.height), min(window.right, self.width)
        out[r0 - window.row:r1 - window.row, c0 - window.col:c1 - window.col] = self.image[r0:r1, c0:c1]
        if out_size is not None and tuple(out_size) != out.shape[:2]:
            interp = cv2.INTER_AREA if out_size[0] < window.height else cv2.INTER_LINEAR
            out = cv2.resize(out, (out_size[1], out_size[0]), interpolation=interp)
            out = out.reshape(out_size[0], out_size[1], self.channels)
        return out


class LogitIdentity(nn.Module):
    """sigmoid(output) == input: the predictor must give back its input image."""

    def forward(self, x):
        return torch.logit(x, eps=1e-6)


class Identity(nn.Module):
    def forward(self, x):
        return x * 1.0


class Constant(nn.Module):
    def __init__(self, value, channels=1):
        super().__init__()
        self.value, self.channels = value, channels

    def forward(self, x):
        return torch.full((x.shape[0], self.channels, *x.shape[2:]), float(self.value))


class ColumnRamp(nn.Module):
    """Output = column index, whatever the input: not flip-equivariant."""

    def forward(self, x):
        ramp = torch.arange(x.shape[3], dtype=torch.float32)
        return ramp.expand(x.shape[0], 1, x.shape[2], x.shape[3]).clone()


def tiff_raster(folder, img):
    """``img`` written as a real tiled TIFF and opened with segkit's reader (for the tests that
    resample tiles, fov != size: the resize path is the reader's own)."""
    path = folder / f"img{len(list(folder.glob('img*.tif')))}.tif"
    tifffile.imwrite(path, img, tile=(16, 16))
    return open_raster(path)


def to_unit(raw):
    return raw.astype(np.float32) / 255.0


def image(h=61, w=77, c=1, seed=0):
    return np.random.default_rng(seed).integers(10, 246, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("blend", ["gaussian", "pyramid", "flat"])
def test_identity_model_reproduces_input(blend):
    img = image()
    raster = ArrayRaster(img)
    probs = predict_probs([(LogitIdentity(), 1.0)], raster, fov_px=16, size=16, overlap_px=5,
                          preprocess=to_unit, blend=blend, batch_size=7)
    assert probs.shape == (1, 61, 77) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-5)


def test_identity_multichannel_d4_tta_region_and_strips():
    img = image(c=3, seed=1)
    raster = ArrayRaster(img)
    region = Window(7, 9, 30, 41)
    strips = list(predict_strips([(Identity(), 1.0)], raster, fov_px=16, size=16, overlap_px=5,
                                 preprocess=to_unit, tta=[(v, 1.0) for v in
                                                          ("identity", "rot90", "transpose", "hflip")],
                                 activation="identity", region=region, batch_size=3))
    assert len(strips) > 1 and strips[0][0] == 0
    assert all(r1 == r0 + s.shape[1] for (r0, s), (r1, _) in zip(strips, strips[1:]))
    out = np.concatenate([s for _, s in strips], axis=1)
    assert out.shape == (3, 30, 41)
    np.testing.assert_allclose(out, img[7:37, 9:50].transpose(2, 0, 1) / 255.0, atol=1e-5)


def test_region_smaller_than_tile_and_image_smaller_than_tile():
    img = image(13, 11)
    probs = predict_probs([(LogitIdentity(), 1.0)], ArrayRaster(img), fov_px=16, size=16, overlap_px=4,
                          preprocess=to_unit)
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-5)
    img = image()
    probs = predict_probs([(LogitIdentity(), 1.0)], ArrayRaster(img), fov_px=16, size=16, overlap_px=4,
                          preprocess=to_unit, region=Window(50, 70, 20, 20))  # clipped to 11x7
    np.testing.assert_allclose(probs[0], img[50:, 70:, 0] / 255.0, atol=1e-5)


@pytest.mark.parametrize("size", [16, 8, 24])
def test_constant_model_gives_constant_output(tmp_path, size):
    with tiff_raster(tmp_path, image()) as raster:
        probs = predict_probs([(Constant(0.0, channels=2), 1.0)], raster, fov_px=16, size=size, overlap_px=5,
                              preprocess=to_unit, tta=[("identity", 0.6), ("hflip", 0.4)])
        assert probs.shape == (2, 61, 77)
        np.testing.assert_allclose(probs, 0.5, atol=1e-6)
        probs = predict_probs([(Constant(1.0, channels=3), 1.0)], raster, fov_px=16, size=size, overlap_px=5,
                              preprocess=to_unit, activation="softmax")
        np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)


def test_resampled_tiles_are_read_at_model_size(tmp_path):
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x[:, :1]

    img = image(40, 50)
    with tiff_raster(tmp_path, img) as raster:
        probs = predict_probs([(Spy(), 1.0)], raster, fov_px=20, size=10, overlap_px=4,
                              preprocess=to_unit, activation="identity", batch_size=4)
    assert probs.shape == (1, 40, 50)
    assert all(s[1:] == (1, 10, 10) for s in seen) and sum(s[0] for s in seen) == 3 * 3
    # a smooth image survives the down- and up-sampling closely
    ramp = np.tile(np.linspace(20, 230, 50, dtype=np.float32), (40, 1)).astype(np.uint8)
    with tiff_raster(tmp_path, ramp) as raster:
        probs = predict_probs([(Identity(), 1.0)], raster, fov_px=20, size=10, overlap_px=4,
                              preprocess=to_unit, activation="identity")
    assert np.abs(probs[0] - ramp / 255.0)[:, 2:-2].max() < 0.02


def test_weighted_tta_gives_the_exact_mix():
    x = torch.zeros(2, 1, 4, 6)
    out = predict_batch([(ColumnRamp(), 1.0)], x, [("identity", 0.6), ("hflip", 0.4)], activation="identity")
    ramp = torch.arange(6.0)
    expected = 0.6 * ramp + 0.4 * ramp.flip(0)
    assert torch.allclose(out, expected.expand(2, 1, 4, 6), atol=1e-6)
    # through the predictor, one tile covering the image
    probs = predict_probs([(ColumnRamp(), 1.0)], ArrayRaster(image(5, 6)), fov_px=6, size=6, overlap_px=0,
                          preprocess=to_unit, tta=[("identity", 3.0), ("vflip", 1.0), ("hflip", 1.0)],
                          activation="identity")
    expected = (4 * ramp + ramp.flip(0)) / 5
    np.testing.assert_allclose(probs[0], np.tile(expected.numpy(), (5, 1)), atol=1e-5)
    # a spec string is parsed: "hflip" = identity 0.6 + hflip 0.4
    probs = predict_probs([(ColumnRamp(), 1.0)], ArrayRaster(image(5, 6)), fov_px=6, size=6, overlap_px=0,
                          preprocess=to_unit, tta="hflip", activation="identity")
    np.testing.assert_allclose(probs[0], np.tile((0.6 * ramp + 0.4 * ramp.flip(0)).numpy(), (5, 1)), atol=1e-5)


def test_ensemble_weights_in_prob_and_logit_space():
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    models = [(Constant(logit(0.2)), 1.0), (Constant(logit(0.8)), 3.0)]
    raster = ArrayRaster(image(20, 30))
    kw = dict(fov_px=16, size=16, overlap_px=5, preprocess=to_unit)
    probs = predict_probs(models, raster, **kw)
    np.testing.assert_allclose(probs, 0.25 * 0.2 + 0.75 * 0.8, atol=1e-6)
    probs = predict_probs(models, raster, average="logits", **kw)
    expected = 1 / (1 + np.exp(-(0.25 * logit(0.2) + 0.75 * logit(0.8))))
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_models_restored_to_their_mode_and_amp_runs(monkeypatch):
    import segkit.runs.device as device

    monkeypatch.setattr(device, "cpu_bf16_is_fast", lambda: True)  # the bf16 path, whatever this CPU
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    model.train()
    raster = ArrayRaster(image(30, 25))
    kw = dict(fov_px=16, size=16, overlap_px=4, preprocess=to_unit)
    a = predict_probs([(model, 1.0)], raster, **kw)
    assert model.training
    b = predict_probs([(model, 1.0)], raster, amp=True, progress=True, **kw)
    assert a.shape == b.shape == (1, 30, 25) and np.isfinite(b).all()
    assert np.abs(a - b).max() < 0.05  # bf16 autocast stays close to float32
    assert not np.array_equal(a, b)     # ... and did run: bf16 rounding shows (the default is float32)


def test_bad_arguments():
    raster = ArrayRaster(image(20, 20))
    kw = dict(fov_px=16, size=16, overlap_px=4, preprocess=to_unit)
    with pytest.raises(SegkitError, match="no models"):
        predict_probs([], raster, **kw)
    with pytest.raises(SegkitError, match="activation"):
        predict_probs([(Identity(), 1.0)], raster, activation="tanh", **kw)
    with pytest.raises(SegkitError, match="region"):
        predict_probs([(Identity(), 1.0)], raster, region=Window(30, 30, 5, 5), **kw)
    with pytest.raises(SegkitError, match="blend"):
        predict_probs([(Identity(), 1.0)], raster, blend="cosine", **kw)


# ---- checkpoint selection (segkit/runs/checkpoint.py)

CKPTS = {e: Path(f"ckpt/epoch_{e:03d}.pt") for e in (1, 2, 3, 5, 8, 9, 10)}


def epochs_of(paths):
    return [int(p.stem.split("_")[1]) for p in paths]


@pytest.mark.parametrize("spec,expected", [
    ("last:3", [8, 9, 10]), ("last", [10]), ("last:1", [10]), ("8,9,10", [8, 9, 10]), ("10, 8", [8, 10]),
    ("8-10", [8, 9, 10]), ("all", [1, 2, 3, 5, 8, 9, 10]), (3, [3]), ("last:9", [1, 2, 3, 5, 8, 9, 10]),
])
def test_select_specs(spec, expected):
    assert epochs_of(select_checkpoints(CKPTS, spec)) == expected


def test_best():
    assert epochs_of(select_checkpoints(CKPTS, "best", best_epoch=5)) == [5]
    with pytest.raises(SegkitError, match="no best epoch"):
        select_checkpoints(CKPTS, "best")


@pytest.mark.parametrize("spec,msg", [
    ("4", "no checkpoint for epoch 4; available epochs: 1, 2, 3, 5, 8, 9, 10"),
    ("1-4", "epoch 4"),
    ("last:0", "K >= 1"),
    ("first", "expected last:K"),
])
def test_select_errors(spec, msg):
    with pytest.raises(SegkitError, match=msg):
        select_checkpoints(CKPTS, spec)


def test_no_checkpoints():
    with pytest.raises(SegkitError, match="no checkpoints"):
        select_checkpoints({}, "last")


def test_weights():
    assert normalise_weights(None, 4) == [0.25] * 4
    assert normalise_weights([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(SegkitError, match="2 weights for 3"):
        normalise_weights([1, 1], 3)
    with pytest.raises(SegkitError, match=">= 0"):
        normalise_weights([1, -1], 2)


# ---- context margin and tissue skipping


@pytest.mark.parametrize("margin", [0, 3])
def test_context_margin_reproduces_input_and_keeps_centres(margin):
    img = image()
    seen = []

    class Spy(LogitIdentity):
        def forward(self, x):
            seen.append(x.shape[-1])
            return super().forward(x)

    probs = predict_probs([(Spy(), 1.0)], ArrayRaster(img), fov_px=16, size=16, overlap_px=2,
                          preprocess=to_unit, margin_px=margin, blend="pyramid")
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-5)
    assert set(seen) == {16}


def test_context_margin_discards_tile_borders():
    class EdgeMarker(nn.Module):
        """1 on the outer 3 px of every tile, 0 inside: a margin of 3 must remove all of it."""

        def forward(self, x):
            out = torch.ones_like(x[:, :1])
            out[:, :, 3:-3, 3:-3] = 0
            return out

    kw = dict(fov_px=16, size=16, overlap_px=2, preprocess=to_unit, activation="identity")
    raster = ArrayRaster(image(40, 45))
    assert predict_probs([(EdgeMarker(), 1.0)], raster, margin_px=3, **kw).max() == 0
    assert predict_probs([(EdgeMarker(), 1.0)], raster, margin_px=0, **kw).max() > 0
    with pytest.raises(SegkitError, match="margin"):
        predict_probs([(EdgeMarker(), 1.0)], raster, margin_px=8, **kw)


def test_background_tiles_are_skipped_with_zero_output():
    img = image(64, 96)
    raster = ArrayRaster(img)
    calls = []

    class Counting(LogitIdentity):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    tissue = np.zeros((8, 12), bool)  # 8 source px per mask px
    tissue[0:2, 0:2] = True  # rows/cols 0..15 of the image
    kw = dict(fov_px=32, size=32, overlap_px=0, preprocess=to_unit)
    probs = predict_probs([(Counting(), 1.0)], raster, tissue=(tissue, 8.0), **kw)
    assert sum(calls) == 1 and probs.shape == (1, 64, 96)
    np.testing.assert_allclose(probs[0, :32, :32], img[:32, :32, 0] / 255.0, atol=1e-5)
    assert probs[0, 32:].max() == 0 and probs[0, :, 32:].max() == 0
    calls.clear()
    probs = predict_probs([(Counting(), 1.0)], raster, tissue=(np.zeros((8, 12), bool), 8.0), **kw)
    assert sum(calls) == 1 and probs.shape == (1, 64, 96) and probs.max() == 0  # one blank forward for C


# ---- a real tiled TIFF through segkit.io.images.raster


def test_identity_through_a_real_tiff(tmp_path):
    img = image(61, 77, c=3, seed=4)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(32, 32), photometric="rgb")
    with open_raster(path) as raster:
        probs = predict_probs([(Identity(), 1.0)], raster, fov_px=16, size=16, overlap_px=5,
                              preprocess=to_unit, activation="identity",
                              tta=[("identity", 0.5), ("transpose", 0.5)], batch_size=5)
    np.testing.assert_allclose(probs, img.transpose(2, 0, 1) / 255.0, atol=1e-5)


# ---- reading runs ahead on a background thread


def test_next_batch_is_read_while_the_model_runs():
    import threading

    img = image(40, 40)
    raster = ArrayRaster(img)
    second_batch_read = threading.Event()
    read_threads = set()
    first_window_of_batch2 = Window(0, 24, 16, 16)  # grid 0/12/24 with batch_size 2: tile 3

    original_read = raster.read

    def read(window, out_size=None):
        read_threads.add(threading.current_thread().name)
        if tuple(window) == tuple(first_window_of_batch2):
            second_batch_read.set()
        return original_read(window, out_size)

    raster.read = read
    waited = []

    class Waiting(LogitIdentity):
        def forward(self, x):
            if not waited:  # first batch: the reader must fetch the next one meanwhile
                waited.append(second_batch_read.wait(timeout=10))
            return super().forward(x)

    probs = predict_probs([(Waiting(), 1.0)], raster, fov_px=16, size=16, overlap_px=4, preprocess=to_unit,
                          batch_size=2)
    assert waited == [True]
    assert threading.current_thread().name not in read_threads
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-5)


@pytest.mark.parametrize("fov_px, size", [(20, 10), (16, 24)])  # downsampled and upsampled tiles
def test_resampling_through_a_real_tiff_matches_the_stand_in(tmp_path, fov_px, size):
    """The ArrayRaster stand-in above is only trusted because the real reader agrees with it:
    a tiled TIFF read through segkit.io.images.raster, tiles resampled (fov != size), gives the
    same probabilities with an identity model and a d4 TTA."""
    rows, cols = np.mgrid[:45, :58]
    img = np.stack([rows * 5, cols * 4, 200 - rows * 2 - cols], axis=-1).astype(np.uint8)  # smooth: survives
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(16, 16), photometric="rgb")
    kw = dict(fov_px=fov_px, size=size, overlap_px=4, preprocess=to_unit, activation="identity",
              tta=[("identity", 0.5), ("rot90", 0.25), ("hflip", 0.25)], batch_size=3)
    with open_raster(path) as raster:
        real = predict_probs([(Identity(), 1.0)], raster, **kw)
    stand_in = predict_probs([(Identity(), 1.0)], ArrayRaster(img), **kw)
    np.testing.assert_allclose(real, stand_in, atol=1e-6)
    assert np.abs(real - img.transpose(2, 0, 1) / 255.0)[:, 2:-2, 2:-2].max() < 0.03  # the image, resampled
