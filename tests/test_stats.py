"""Normalization statistics: streaming mean/std equal the one-shot values; save/load; normalize."""

import numpy as np
import pytest

from segkit.data.stats import channel_stats, load_stats, normalize, save_stats
from segkit.ground.errors import SegkitError


def test_streaming_stats_match_numpy_over_all_pixels():
    rng = np.random.default_rng(0)
    samples = [rng.random((h, w, 3), dtype=np.float32) * [1, 2, 0.5] + [0, 1, 1000] for h, w in [(5, 7), (3, 2), (9, 4)]]
    mean, std = channel_stats(iter(samples))
    flat = np.concatenate([s.reshape(-1, 3).astype(np.float64) for s in samples])
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-9)


def test_exact_small_case_and_grey_samples():
    mean, std = channel_stats([np.array([[0.0, 1.0]], np.float32), np.array([[2.0, 3.0]], np.float32)])
    assert mean == [1.5]
    assert std == [float(np.sqrt(1.25))]


def test_nan_pixels_are_skipped():
    a = np.array([[[0.0, np.nan], [2.0, 4.0]]], np.float32)
    mean, std = channel_stats([a])
    assert mean == [1.0, 4.0] and std == [1.0, 0.0]


def test_bad_streams_are_errors():
    with pytest.raises(SegkitError, match="no pixels"):
        channel_stats([])
    with pytest.raises(SegkitError, match="sample 1 has 2 channels, the first had 3"):
        channel_stats([np.zeros((2, 2, 3)), np.zeros((2, 2, 2))])


def test_normalize_per_channel_and_zero_std():
    image = np.array([[[1.0, 5.0], [3.0, 5.0]]], np.float32)
    out = normalize(image, [2.0, 5.0], [0.5, 0.0])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[-2.0, 0.0], [2.0, 0.0]]])
    assert image[0, 0, 0] == 1.0  # input untouched
    with pytest.raises(SegkitError, match="2 channels but the statistics have 3"):
        normalize(image, [0, 0, 0], [1, 1, 1])


def test_save_load_round_trip_is_atomic(tmp_path):
    path = save_stats(tmp_path / "run" / "stats.json", [0.25, 0.5], [0.125, 1.0], windows=12)
    assert load_stats(path) == ([0.25, 0.5], [0.125, 1.0])
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]  # no temp file left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SegkitError, match="missing.json: statistics file not found"):
        load_stats(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SegkitError, match="bad.json: not a readable statistics JSON"):
        load_stats(bad)
    bad.write_text('{"mean": [1]}')
    with pytest.raises(SegkitError, match="bad.json: expected"):
        load_stats(bad)
