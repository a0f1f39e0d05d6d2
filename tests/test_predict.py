import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, normalise_weights
from segkit.infer.ensemble import predict_batch
from segkit.infer.predict import predict_probs, predict_strips
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
def test_constant_model_gives_constant_output(size):
    raster = ArrayRaster(image())
    probs = predict_probs([(Constant(0.0, channels=2), 1.0)], raster, fov_px=16, size=size, overlap_px=5,
                          preprocess=to_unit, tta=[("identity", 0.6), ("hflip", 0.4)])
    assert probs.shape == (2, 61, 77)
    np.testing.assert_allclose(probs, 0.5, atol=1e-6)
    probs = predict_probs([(Constant(1.0, channels=3), 1.0)], raster, fov_px=16, size=size, overlap_px=5,
                          preprocess=to_unit, activation="softmax")
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)


def test_resampled_tiles_are_read_at_model_size():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x[:, :1]

    img = image(40, 50)
    probs = predict_probs([(Spy(), 1.0)], ArrayRaster(img), fov_px=20, size=10, overlap_px=4,
                          preprocess=to_unit, activation="identity", batch_size=4)
    assert probs.shape == (1, 40, 50)
    assert all(s[1:] == (1, 10, 10) for s in seen) and sum(s[0] for s in seen) == 3 * 3
    # a smooth image survives the down- and up-sampling closely
    ramp = np.tile(np.linspace(20, 230, 50, dtype=np.float32), (40, 1)).astype(np.uint8)
    probs = predict_probs([(Identity(), 1.0)], ArrayRaster(ramp), fov_px=20, size=10, overlap_px=4,
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
    import tifffile

    from segkit.io.images import raster as raster_mod
    img = image(61, 77, c=3, seed=4)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, img, tile=(32, 32), photometric="rgb")
    with raster_mod.open_raster(path) as raster:
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
    import tifffile

    from segkit.io.images.raster import open_raster

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


# ---- a gating predictor, argument boundaries


def test_gated_tiles_blend_with_weight_zero_through_a_real_tiff(tmp_path):
    """A predictor returning (probs, kept): a tile not kept adds nothing, so where a kept tile
    overlaps it the output is the kept tile's value alone, and where none covers it is 0."""
    import tifffile

    from segkit.io.images.raster import open_raster

    path = tmp_path / "gate.tif"
    tifffile.imwrite(path, np.full((16, 24), 7, np.uint8))
    seen = []

    def gate(x):  # tile k (left to right) predicts 0.1 * (k + 1); only the middle tile is kept
        n = x.shape[0]
        values = torch.arange(len(seen), len(seen) + n, dtype=torch.float32) * 0.1 + 0.1
        seen.extend(range(n))
        kept = torch.tensor([len(seen) - n + i == 1 for i in range(n)])
        return values.view(n, 1, 1, 1).expand(n, 1, *x.shape[2:]).clone(), kept

    with open_raster(path) as raster:
        probs = predict_probs(gate, raster, fov_px=16, size=16, overlap_px=4, preprocess=to_unit,
                              blend="flat", batch_size=8)
    assert len(seen) == 2  # columns 0-15 and 8-23: a 16 px tile, 4 px overlap, even steps
    np.testing.assert_allclose(probs[0, :, 8:], 0.2, rtol=1e-6)  # the kept tile alone
    assert (probs[0, :, :8] == 0).all()                          # only the gated tile covered these


def test_argument_boundaries_and_the_default_overlap():
    from segkit.infer.predict import default_overlap_px

    assert [default_overlap_px(n) for n in (-4, 0, 3, 4, 255, 256, 257, 1000)] == [0, 0, 0, 1, 63, 64, 64, 64]
    raster = ArrayRaster(image(9, 11))
    kw = dict(fov_px=4, overlap_px=None, preprocess=to_unit, activation="identity")
    # the smallest valid values run: size 1 (tiles resampled 4 -> 1), batch 1, margin 0, a 2 px centre
    one = predict_probs([(Identity(), 1.0)], raster, size=1, batch_size=1, **kw)
    assert one.shape == (1, 9, 11)
    centre = predict_probs([(Identity(), 1.0)], raster, size=4, batch_size=1, margin_px=1, **kw)
    np.testing.assert_allclose(centre[0], raster.image[:, :, 0] / 255.0, atol=1e-6)
    for bad, message in [(dict(size=0, batch_size=1), r"size \(0\) and batch_size \(1\) must be positive"),
                         (dict(size=4, batch_size=0), r"size \(4\) and batch_size \(0\) must be positive"),
                         (dict(size=4, batch_size=1, margin_px=-1), r"margin_px -1: must be >= 0"),
                         (dict(size=4, batch_size=1, margin_px=2), r"fov_px 4 - 2 x margin > 0")]:
        with pytest.raises(SegkitError, match=message):
            predict_probs([(Identity(), 1.0)], raster, **kw, **bad)


def test_an_overlap_over_half_the_tile_is_clamped_with_one_warning():
    raster = ArrayRaster(image(20, 20))
    kw = dict(fov_px=8, size=8, preprocess=to_unit, activation="identity", blend="flat")
    with pytest.warns(UserWarning, match=r"infer.overlap_px: 5 px is more than half the 8 px tile; tiles overlap by 4 px"):
        clamped = predict_probs([(Identity(), 1.0)], raster, overlap_px=5, **kw)
    half = predict_probs([(Identity(), 1.0)], raster, overlap_px=4, **kw)
    np.testing.assert_array_equal(clamped, half)


def test_which_tiles_hold_tissue_at_a_fractional_scale():
    """A tile runs when any tissue cell under it is True, its cell range rounded outwards; one
    cell lies under even a tile smaller than a cell."""
    from segkit.infer.predict import _has_tissue

    tissue = np.zeros((4, 4), bool)
    tissue[0, 0] = True                                   # cell (0, 0): source rows/cols 0..2.5
    assert _has_tissue(Window(0, 0, 2, 2), tissue, 2.5)
    assert _has_tissue(Window(2, 2, 1, 1), tissue, 2.5)     # rows 2..3 touch cell 0
    assert not _has_tissue(Window(3, 3, 4, 4), tissue, 2.5)  # starts in cell 1
    tissue[:] = False
    tissue[3, 3] = True                                   # the last cell: source 7.5..10
    assert _has_tissue(Window(5, 5, 3, 3), tissue, 2.5)     # ends at 8 > 7.5: rounded outwards
    assert not _has_tissue(Window(5, 5, 2, 2), tissue, 2.5)  # ends at 7.0, inside cell 2
    assert _has_tissue(Window(8, 8, 1, 1), tissue, 2.5)
    assert not _has_tissue(Window(0, 8, 7, 2), tissue, 2.5) and not _has_tissue(Window(8, 0, 2, 7), tissue, 2.5)


class DictOutput(nn.Module):
    """A torchvision-style model: {"out": logits, "aux": ...}."""

    def forward(self, x):
        return {"aux": torch.zeros(1), "out": torch.logit(x, eps=1e-6)}


def test_a_dict_output_model_and_a_gate_with_no_tissue():
    img = image(20, 24)
    raster = ArrayRaster(img)
    kw = dict(fov_px=16, size=16, overlap_px=4, preprocess=to_unit)
    np.testing.assert_allclose(predict_probs([(DictOutput(), 1.0)], raster, **kw)[0], img[:, :, 0] / 255.0, atol=1e-5)
    for spelling in ("none", "identity", None):   # no activation, however it is spelled
        np.testing.assert_allclose(predict_probs([(Identity(), 1.0)], raster, activation=spelling, **kw)[0],
                                   img[:, :, 0] / 255.0, atol=1e-6)

    def gate(x):  # two channels and a kept flag per tile
        return torch.ones(x.shape[0], 2, *x.shape[2:]), torch.ones(x.shape[0], dtype=torch.bool)

    blank = predict_probs(gate, raster, tissue=(np.zeros((2, 2), bool), 16.0), **kw)
    assert blank.shape == (2, 20, 24) and blank.max() == 0      # the channels come from the blank forward


def test_the_tiles_run_are_the_grid_of_the_kept_centres():
    """How many tiles the model sees: the grid of (fov_px - 2 x margin) centres with the overlap
    (clamped to half a centre), over the region only; and what each tile reads."""
    from segkit.data.windows import grid_windows
    from segkit.infer.predict import resize_probs

    img = image(61, 77)
    seen = []

    def counting(x):
        seen.append(x.shape[0])
        return x[:, :1] * 1.0

    def tiles(**kw):
        seen.clear()
        probs = predict_probs(counting, ArrayRaster(img), preprocess=to_unit, batch_size=4, **kw)
        return sum(seen), probs

    n, probs = tiles(fov_px=16, size=16, overlap_px=None, margin_px=2)
    assert n == len(grid_windows(61, 77, 12, 3))                        # 12 px centres, default overlap 12 // 4
    np.testing.assert_allclose(probs[0], img[:, :, 0] / 255.0, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                   # half a tile is allowed, silently
        n, _ = tiles(fov_px=8, size=8, overlap_px=4)
    assert n == len(grid_windows(61, 77, 8, 4))
    with pytest.warns(UserWarning, match="tiles overlap by 4 px"):
        assert tiles(fov_px=8, size=8, overlap_px=7)[0] == n             # clamped to 4, not to less
    region = Window(10, 20, 17, 30)
    n, probs = tiles(fov_px=8, size=8, overlap_px=2, region=region)
    assert n == len(grid_windows(61, 77, 8, 2, region=region)) < len(grid_windows(61, 77, 8, 2))
    np.testing.assert_allclose(probs[0], img[10:27, 20:50, 0] / 255.0, atol=1e-6)
    # a preprocess giving (h, w) tiles is read as one channel; a wrong tile size names the raster
    one = predict_probs(counting, ArrayRaster(img), fov_px=16, size=16, overlap_px=4,
                        preprocess=lambda raw: raw[:, :, 0].astype(np.float32) / 255.0)
    np.testing.assert_allclose(one[0], img[:, :, 0] / 255.0, atol=1e-6)
    with pytest.raises(SegkitError, match=r"mem.tif: tile \(0, 0, 16, 16\) read as \(15, 16, 1\), "
                                          r"expected \(16, 16, C\)"):
        predict_probs(counting, ArrayRaster(img), fov_px=16, size=16, overlap_px=4, preprocess=lambda raw: to_unit(raw)[1:])
    # probabilities resized to a non-square shape: OpenCV's bilinear sampling, per channel
    small = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    wide = resize_probs(small, (5, 9))
    expected = np.stack([cv2.resize(small[0, c].numpy(), (9, 5), interpolation=cv2.INTER_LINEAR) for c in range(2)])
    assert tuple(wide.shape) == (1, 2, 5, 9)
    np.testing.assert_allclose(wide[0].numpy(), expected, rtol=1e-6, atol=1e-6)
