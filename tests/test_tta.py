import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.infer.tta import TTA_SETS, VIEWS, augment, deaugment, parse_tta


@pytest.mark.parametrize("view", VIEWS)
def test_roundtrip_on_asymmetric_tensor(view):
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    y = augment(x, view)
    assert torch.equal(deaugment(y, view), x)
    if view != "identity":
        assert y.shape != x.shape or not torch.equal(y, x)


def test_views_are_what_they_say():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[None, None]  # 2x3
    assert augment(x, "hflip")[0, 0].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert augment(x, "vflip")[0, 0].tolist() == [[4, 5, 6], [1, 2, 3]]
    assert augment(x, "transpose")[0, 0].tolist() == [[1, 4], [2, 5], [3, 6]]
    assert augment(x, "rot180")[0, 0].tolist() == [[6, 5, 4], [3, 2, 1]]
    assert augment(x, "rot90")[0, 0].tolist() == [[3, 6], [2, 5], [1, 4]]  # counter-clockwise
    assert augment(x, "rot270")[0, 0].tolist() == [[4, 1], [5, 2], [6, 3]]
    assert augment(x, "transverse")[0, 0].tolist() == [[6, 3], [5, 2], [4, 1]]


def test_d4_views_are_eight_distinct_images():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    outs = {tuple(augment(x, v).flatten().tolist()) for v, _ in parse_tta("d4")}
    assert len(outs) == 8


def test_named_sets_and_weights():
    assert parse_tta(None) == [("identity", 1.0)] == parse_tta("none") == parse_tta("")
    assert parse_tta("hflip") == [("identity", 0.6), ("hflip", 0.4)]
    assert [v for v, _ in parse_tta("flips")] == ["identity", "hflip", "vflip"]
    assert len(parse_tta("d4")) == 8
    for name in TTA_SETS:
        assert sum(w for _, w in parse_tta(name)) == pytest.approx(1.0)
    assert parse_tta("identity:0.5,hflip:0.3,vflip:0.2") == [("identity", 0.5), ("hflip", 0.3), ("vflip", 0.2)]
    assert parse_tta("identity:2, hflip:1, vflip:1") == [("identity", 0.5), ("hflip", 0.25), ("vflip", 0.25)]
    assert parse_tta([("identity", 3), ("rot90", 1)]) == [("identity", 0.75), ("rot90", 0.25)]
    assert parse_tta({"identity": 1, "transpose": 1}) == [("identity", 0.5), ("transpose", 0.5)]
    assert parse_tta("rot90") == [("rot90", 1.0)]


@pytest.mark.parametrize("spec,msg", [
    ("mirror", "valid sets"),
    ("identity:0.5,mirror:0.5", "unknown"),
    ("identity:x", "not a number"),
    ("identity:0,hflip:0", "positive"),
    ("identity:-1,hflip:2", ">= 0"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(SegkitError, match=msg):
        parse_tta(spec)


VIEW_NAMES = "identity, hflip, vflip, rot90, rot180, rot270, transpose, transverse"


@pytest.mark.parametrize("spec, message", [
    ("nope", f"tta 'nope': unknown; valid sets: none, hflip, vflip, flips, d4; views: {VIEW_NAMES}; "
             "or 'view:weight,...'"),
    ("identity:0,hflip:0", "tta 'identity:0,hflip:0': weights must be >= 0 and sum to a positive number, got [0.0, 0.0]"),
    ({"identity": -1}, "tta {'identity': -1}: weights must be >= 0 and sum to a positive number, got [-1.0]"),
    ([("identity", 1), ("hflip", -1)], "tta [('identity', 1), ('hflip', -1)]: weights must be >= 0"),
    (5, "tta 5: expected a string like 'hflip' or 'identity:0.6,hflip:0.4'"),
    ([("id",)], "tta [('id',)]: expected (view, weight) pairs"),
    ("identity:1,nope:1", f"tta view 'nope': unknown; valid: {VIEW_NAMES}"),
])
def test_bad_tta_specs_are_named_in_full(spec, message):
    """The whole message a user reads (the CLI prints it as its one Error: line)."""
    from segkit.ground.errors import SegkitError
    from segkit.infer.tta import parse_tta

    with pytest.raises(SegkitError) as caught:
        parse_tta(spec)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("spec", [None, "", " none ", "None"])
def test_every_spelling_of_no_tta_is_the_original_alone(spec):
    from segkit.infer.tta import parse_tta

    assert parse_tta(spec) == [("identity", 1.0)]
