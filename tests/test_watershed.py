"""The watershed's exact rules: thresholds at their boundaries, 4-connectivity, where two objects
meet, object numbering, the strip stream's input checks and its cut rows."""

import warnings

import numpy as np
import pytest

from segkit.post.watershed import StripWatershed, flood, watershed_instances
from test_instances import _same_partition


def test_watershed_thresholds_are_inclusive_and_contact_blocks_seeds_exactly():
    """Each threshold at its boundary, with the default settings (mask 0.5, seed 0.7, border 0.5):
    body == 0.5 is object, body == 0.7 is seed, border or contact == 0.5 is no seed."""
    from segkit.post.watershed import SeedSettings, seeds_and_mask

    assert SeedSettings() == SeedSettings(mask=0.5, seed=0.7, border=0.5)
    body = np.array([[0.49, 0.5, 0.69, 0.7, 0.7, 0.7, 0.7]], np.float32)
    border = np.array([[0, 0, 0, 0, 0.49, 0.5, 0]], np.float32)
    contact = np.array([[0, 0, 0, 0, 0, 0, 0.5]], np.float32)
    mask, seeds, got_body = seeds_and_mask(np.stack([contact, body, border]), ("contact", "body", "border"),
                                           SeedSettings())
    assert mask.tolist() == [[False, True, True, True, True, True, True]]
    assert seeds.tolist() == [[False, False, False, True, True, False, False]]
    assert got_body.dtype == np.float32 and np.array_equal(got_body, body)
    # a row of three touching cores, two of them blocked by contact: one object, not three
    body = np.full((3, 9), 0.9, np.float32)
    contact = np.zeros_like(body)
    contact[:, 3:6] = 0.9                                 # the middle core is no seed
    ids = watershed_instances(np.stack([body, contact]), ("body", "contact"))
    # two seed components (columns 0-2 and 6-8) flood the whole 3x9 region: 2 objects, split evenly
    assert sorted(np.bincount(ids.ravel())[1:].tolist()) in ([12, 15], [13, 14])
    assert ids.min() == 1 and ids.max() == 2 and ids[0, 0] != ids[0, 8]
    with pytest.raises(ValueError, match=r"expected probabilities \(2, h, w\) for \['body', 'contact'\], got shape \(3, 9\)"):
        watershed_instances(body, ("body", "contact"))


def test_watershed_numbers_objects_one_to_k_and_streams_check_their_input():
    body = np.zeros((6, 12), np.float32)
    body[1:5, 1:4] = 0.9                                  # three separate objects, in column order
    body[1:5, 5:7] = 0.6                                  # no seed: kept whole
    body[1:5, 8:11] = 0.9
    ids = watershed_instances(body[None], ("body",))
    assert np.unique(ids).tolist() == [0, 1, 2, 3] and ids.dtype == np.int32
    assert ((ids > 0) == (body >= 0.5)).all()
    stream = StripWatershed(6, 12, ("body",))
    with pytest.raises(ValueError, match="strips must arrive in row order: expected row 0, got 2"):
        stream.push(2, body[None, 2:4])
    with pytest.raises(ValueError, match=r"strip \(1, 2, 11\) at row 0 does not fit the 6x12 image"):
        stream.push(0, body[None, :2, :11])
    with pytest.raises(ValueError, match=r"does not fit the 6x12 image"):
        stream.push(0, np.zeros((1, 7, 12), np.float32))  # one row taller than the image
    assert stream.push(0, body[None, :0]) == []           # an empty strip is nothing
    out = stream.push(0, body[None, :4])
    with pytest.raises(ValueError, match="got 4 rows, image height is 6"):
        stream.finish()
    out += stream.push(4, body[None, 4:])
    assert stream.finish() == [] and stream.objects == 3 and stream.cut_rows == []
    got = np.concatenate([s for _, s, _ in out])
    assert _same_partition(got, ids) and got.max() == 3
    bodies = np.concatenate([b for _, _, b in out])
    assert np.array_equal(bodies, body)


def test_a_tall_region_closed_by_the_last_strip_is_not_reported_cut():
    """More rows than max_rows held when the last strip arrives: the region is complete and flooded
    whole, so no cut row and no warning (before, a cut was reported that never happened)."""
    body = np.full((1, 70, 5), 0.9, np.float32)
    stream = StripWatershed(70, 5, ("body",), max_rows=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stream.push(0, body) + stream.finish()   # chunks of 64 and 6 rows
    got = np.concatenate([s for _, s, _ in out])
    assert np.unique(got).tolist() == [1] and stream.cut_rows == []
    tall = StripWatershed(100, 5, ("body",), max_rows=64, chunk_rows=16)
    with pytest.warns(UserWarning, match="cut at row 48"):   # one cut: warned at once
        list(tall((r, np.full((1, 16, 5), 0.9, np.float32)[:, :100 - r]) for r in range(0, 100, 16)))
    assert tall.cut_rows == [48]


def test_watershed_regions_and_seeds_are_4_connected_and_flood_follows_the_body():
    body = np.zeros((4, 6), np.float32)
    body[0:2, 0:2] = 0.6                                  # two seedless squares touching at a corner
    body[2:4, 2:4] = 0.6
    body[0, 5] = body[1, 4] = 0.9                         # two seeds touching at a corner
    ids = watershed_instances(body[None], ("body",))
    assert len(np.unique(ids)) - 1 == 4                   # 4-connected: nothing joins across a corner
    block = np.full((1, 2, 2), 0.9, np.float32)           # one region, seeds on its diagonal only
    border = np.array([[[0.0, 0.9], [0.9, 0.0]]], np.float32)
    assert np.unique(watershed_instances(np.concatenate([block, border]), ("body", "border"))).tolist() == [1, 2]
    # one region, two seeds (columns 0 and 9); a dip of the body at column 3 is where they meet
    body = np.full((1, 10), 0.9, np.float32)
    body[0, 3] = 0.55
    border = np.full_like(body, 0.9)
    border[0, [0, 9]] = 0                                 # seeds only at the two ends
    ids = watershed_instances(np.stack([body, border]), ("body", "border"))[0]
    assert ids[0] != ids[9] and (ids[:3] == ids[0]).all() and (ids[4:] == ids[9]).all()
    # a seedless object numbered last in scan order is kept (bottom right)
    body = np.zeros((8, 8), np.float32)
    body[0:3, 0:3] = 0.9
    body[6:8, 6:8] = 0.6
    ids = watershed_instances(body[None], ("body",))
    assert np.unique(ids).tolist() == [0, 1, 2] and (ids[6:, 6:] > 0).all()
    with pytest.raises(ValueError, match=r"expected probabilities \(2, h, w\) .* got shape \(3, 4, 4\)"):
        watershed_instances(np.zeros((3, 4, 4), np.float32), ("body", "border"))


def test_on_a_flat_body_each_pixel_joins_the_seed_fewer_4_connected_steps_away():
    """Flooding is 4-connected like the regions: on an even body a pixel goes to the seed at the
    smaller Manhattan distance (seeds 7 steps apart, so no pixel is tied). 8-connected flooding
    would give (2, 2) and (3, 1) to the top-left seed, diagonal steps counting as one."""
    h, w = 4, 5
    seeds = np.zeros((h, w), bool)
    seeds[0, 0] = seeds[3, 4] = True
    out = flood(np.full((h, w), 0.5, np.float32), seeds, np.ones((h, w), bool))
    rows, cols = np.mgrid[:h, :w]
    nearer_first = rows + cols < (h - 1 - rows) + (w - 1 - cols)
    np.testing.assert_array_equal(out, np.where(nearer_first, 1, 2))
