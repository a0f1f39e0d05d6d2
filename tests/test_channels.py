"""Channel stacking: exact window maths on raw dtypes (int16 HU, uint16), percentiles, gamma, errors."""

import json

import numpy as np
import pytest

from segkit.data.channels import (
    CT_PRESETS,
    DEFAULT_PERCENTILES,
    ChannelSpec,
    channel_specs_from_dicts,
    channel_specs_to_dicts,
    parse_channels,
    resolve_channels,
    stack_channels,
)
from segkit.ground.errors import SegkitError


def hu(values):
    return np.array(values, dtype=np.int16).reshape(1, -1, 1)


def test_lung_preset_on_int16_hounsfield_units():
    specs = parse_channels([{"preset": "lung"}], bands=1, dtype=np.int16)
    assert (specs[0].low, specs[0].high) == (-1350.0, 150.0)  # W1500 / L-600
    out = stack_channels(hu([-1600, -1350, -975, -600, -225, 150, 400]), specs)
    assert out.dtype == np.float32 and out.shape == (1, 7, 1)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0.25, 0.5, 0.75, 1, 1])


def test_three_ct_windows_of_one_band_are_three_channels():
    specs = parse_channels([{"preset": "lung"}, {"preset": "mediastinum"}, {"preset": "bone"}], bands=1, dtype=np.int16)
    raw = hu([-1600, -600, -160, 40, 240, 300, 1050, 3000])
    out = stack_channels(raw, specs)
    assert out.shape == (1, 8, 3)
    # lung [-1350, 150], mediastinum [-160, 240], bone [-450, 1050]; float32 maths, exact division
    f = np.float32
    np.testing.assert_array_equal(out[0, :, 0], [0, 0.5, f(1190) / f(1500), f(1390) / f(1500), 1, 1, 1, 1])
    np.testing.assert_array_equal(out[0, :, 1], [0, 0, 0, 0.5, 1, 1, 1, 1])
    np.testing.assert_array_equal(out[0, :, 2], [0, 0, f(290) / f(1500), f(490) / f(1500), f(690) / f(1500), 0.5, 1, 1])


def test_window_low_high_and_center_width_on_uint16_without_8bit_conversion():
    raw = np.array([[0, 3010, 6020, 12040, 65535]], dtype=np.uint16)[..., None]
    specs = parse_channels(
        [{"window": [0, 12040]}, {"low": 0, "high": 256}, {"center": 6020, "width": 12040}], bands=1, dtype=np.uint16
    )
    out = stack_channels(raw, specs)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0.25, 0.5, 1, 1])
    np.testing.assert_array_equal(out[0, :, 1], [0, 1, 1, 1, 1])  # 3010 > 256: the narrow window saturates
    np.testing.assert_array_equal(out[0, :, 2], out[0, :, 0])


def test_gamma_is_applied_after_scaling():
    raw = np.array([[0, 25, 50, 100, 200]], dtype=np.uint8)[..., None]
    specs = parse_channels([{"window": [0, 100], "gamma": 2}, {"window": [0, 100], "gamma": 0.5}], bands=1, dtype=np.uint8)
    out = stack_channels(raw, specs)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0.0625, 0.25, 1, 1])
    np.testing.assert_array_equal(out[0, :, 1], [0, 0.5, np.sqrt(np.float32(0.5)), 1, 1])


def test_band_selection_picks_the_right_band():
    raw = np.zeros((2, 3, 3), np.uint8)
    raw[..., 2] = 255
    specs = parse_channels([{"band": 2}, {"band": 0}], bands=3, dtype=np.uint8)
    out = stack_channels(raw, specs)
    assert out[..., 0].min() == 1 and out[..., 1].max() == 0


def test_percentile_windows_resolved_once_on_a_thumbnail():
    thumb = np.arange(101, dtype=np.int16).reshape(1, 101, 1)
    specs = parse_channels([{"percentiles": [10, 90]}], bands=1, dtype=np.int16)
    assert not specs[0].resolved
    with pytest.raises(SegkitError, match=r"channels\[0\].*resolve_channels"):
        stack_channels(thumb, specs)
    resolved = resolve_channels(specs, thumb)
    assert (resolved[0].low, resolved[0].high) == (10.0, 90.0)
    out = stack_channels(hu([0, 10, 30, 50, 90, 100]), resolved)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 0.25, 0.5, 1, 1])


def test_percentiles_of_a_flat_band_do_not_divide_by_zero():
    thumb = np.full((4, 5, 1), 7, np.uint16)
    resolved = resolve_channels(parse_channels([{"percentiles": [1, 99]}], bands=1, dtype=np.uint16), thumb)
    assert (resolved[0].low, resolved[0].high) == (7.0, 8.0)
    assert stack_channels(thumb, resolved).max() == 0


def test_percentiles_ignore_nan_in_float_images():
    thumb = np.array([[np.nan, 0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)[..., None]
    resolved = resolve_channels(parse_channels([{"percentiles": [0, 100]}], bands=1, dtype=np.float32), thumb)
    assert (resolved[0].low, resolved[0].high) == (0.0, 4.0)


@pytest.mark.parametrize(
    "dtype, values, expected",
    [
        (np.uint8, [0, 51, 255], [0, 0.2, 1]),
        (np.bool_, [False, True, True], [0, 1, 1]),
        (np.float32, [-0.5, 0.25, 1.5], [0, 0.25, 1]),
    ],
)
def test_default_of_8_bit_and_float_is_the_dtype_range(dtype, values, expected):
    raw = np.stack([np.array([values], dtype=dtype)] * 2, axis=-1)
    specs = parse_channels(None, bands=2, dtype=dtype)
    assert [s.band for s in specs] == [0, 1]
    out = stack_channels(raw, specs)
    assert out.shape == (1, 3, 2)
    np.testing.assert_allclose(out[0, :, 1], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.uint32])
def test_default_of_wider_integers_is_a_percentile_window_of_the_thumbnail(dtype):
    # an aerial-like uint16 band filling ~2% of its dtype range: 1000..2300
    rng = np.random.default_rng(0)
    thumb = rng.integers(1000, 2300, size=(64, 64, 2)).astype(dtype)
    specs = parse_channels(None, bands=2, dtype=dtype)
    assert [s.percentiles for s in specs] == [DEFAULT_PERCENTILES] * 2 and not specs[0].resolved
    assert parse_channels([{"band": 1}], bands=2, dtype=dtype)[0].percentiles == DEFAULT_PERCENTILES
    resolved = resolve_channels(specs, thumb)
    low, high = np.percentile(thumb[..., 0], DEFAULT_PERCENTILES)
    assert (resolved[0].low, resolved[0].high) == (low, high)
    out = stack_channels(thumb, resolved)
    assert out.min() == 0 and out.max() == 1 and 0.4 < out.mean() < 0.6   # not a nearly black image
    saved = channel_specs_to_dicts(resolved)                                # recorded in the run like any spec
    assert saved[0] == {"band": 0, "percentiles": list(DEFAULT_PERCENTILES), "resolved": [low, high]}
    assert channel_specs_from_dicts(json.loads(json.dumps(saved))) == resolved


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ([{"window": [0, 255]}, {"window": [20, 10]}], r"^channels\[1\]: high \(10\) <= low \(20\)$"),
        ([{"low": 5, "high": 5}], r"^channels\[0\]: high \(5\) <= low \(5\)$"),
        ([{"band": 3}], r"^channels\[0\]: band 3 does not exist \(the image has 3 band\(s\): 0\.\.2\)$"),
        ([{"preset": "lungs"}], r"^channels\[0\]: unknown preset 'lungs'; valid presets: abdomen, bone, brain,"),
        ([{"windw": [0, 1]}], r"^channels\[0\]: unknown key 'windw' \(did you mean 'window'\?\)"),
        ([{"gamma": 0}], r"^channels\[0\]: gamma must be > 0"),
        ([{"percentiles": [90, 10]}], r"^channels\[0\]: percentiles must satisfy"),
        ([{"preset": "lung", "window": [0, 1]}], r"^channels\[0\]: give one window form, got window and preset$"),
        ([{"center": 40}], r"^channels\[0\]: give both center and width$"),
        ([{"window": [0]}], r"^channels\[0\]: window must be a list of two numbers"),
        ([], r"^channels: expected a non-empty list"),
    ],
)
def test_bad_channel_specs_are_one_line_errors(spec, pattern):
    with pytest.raises(SegkitError, match=pattern) as info:
        parse_channels(spec, bands=3, dtype=np.uint16)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_every_valid_preset():
    with pytest.raises(SegkitError) as info:
        parse_channels([{"preset": "nope"}], bands=1, dtype=np.int16)
    assert all(name in str(info.value) for name in CT_PRESETS)


def test_specs_round_trip_through_json_with_resolved_percentiles():
    specs = parse_channels(
        [{"preset": "brain", "name": "brain"}, {"center": 0, "width": 10, "gamma": 0.5}, {"percentiles": [1, 99], "band": 1}],
        bands=2,
        dtype=np.int16,
    )
    specs = resolve_channels(specs, np.stack([np.zeros((1, 101)), np.arange(101)[None]], -1).astype(np.int16))
    back = channel_specs_from_dicts(json.loads(json.dumps(channel_specs_to_dicts(specs))), bands=2)
    assert back == specs
    assert back[2] == ChannelSpec(band=1, low=1.0, high=99.0, percentiles=(1.0, 99.0))
    assert back[0].preset == "brain" and (back[0].low, back[0].high) == (0.0, 80.0)
