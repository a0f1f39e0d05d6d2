"""Checkpoints: atomic save/load round-trip, bad files, keep-last-K + best, soups, RNG state."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from segkit.ground.errors import SegkitError
from segkit.runs import checkpoint as ck
from segkit.train.optim import create_optimizer, create_scheduler


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))


def test_save_load_round_trip_with_optimizer_and_scheduler(tmp_path):
    model = _model()
    opt = create_optimizer("adamw", model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = create_scheduler("onecycle", opt, total_steps=10, warmup_steps=2)
    model(torch.randn(2, 2, 6, 5)).sum().backward()
    opt.step()
    sched.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": 3, "rng": ck.rng_state(), "config": {"lr": 1e-3, "name": "x"}}
    path = ck.save_checkpoint(tmp_path / "checkpoints" / ck.checkpoint_name(3), state)
    assert path.name == "epoch_0003.pt"
    assert [p.name for p in path.parent.iterdir()] == ["epoch_0003.pt"]  # no temp file left
    back = ck.load_checkpoint(path, required_keys=("model", "epoch"))
    assert back["epoch"] == 3 and back["config"] == {"lr": 1e-3, "name": "x"}
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v)
    opt2 = create_optimizer("adamw", _model().parameters(), lr=1e-3, weight_decay=1e-2)
    opt2.load_state_dict(back["optimizer"])
    sched2 = create_scheduler("onecycle", opt2, total_steps=10, warmup_steps=2)
    sched2.load_state_dict(back["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "epoch_0001.pt"
    ck.save_checkpoint(path, {"epoch": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, {"epoch": 2})
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_foreign_and_missing_files_are_segkit_errors(tmp_path):
    good = ck.save_checkpoint(tmp_path / "epoch_0001.pt", {"model": _model().state_dict(), "epoch": 1})
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegkitError, match="cut.pt"):
        ck.load_checkpoint(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(SegkitError, match="notes.pt"):
        ck.load_checkpoint(text)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump(os.getcwd, f)  # arbitrary code objects must not load
    with pytest.raises(SegkitError, match="evil.pt: the checkpoint holds more than weights.*refused"):
        ck.load_checkpoint(evil)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(SegkitError, match="tensor.pt.*not a dict"):
        ck.load_checkpoint(tensor_only)
    with pytest.raises(SegkitError, match="missing optimizer"):
        ck.load_checkpoint(good, required_keys=("model", "optimizer"))
    with pytest.raises(SegkitError, match="nope.pt: checkpoint not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")


def test_list_and_prune_keep_last_and_best(tmp_path):
    for epoch in (1, 2, 10, 3, 4, 5):
        ck.save_checkpoint(tmp_path / ck.checkpoint_name(epoch), {"epoch": epoch})
    (tmp_path / "best.pt").write_bytes(b"x")
    (tmp_path / "epoch_x.pt").write_bytes(b"x")
    assert [ck.checkpoint_epoch(p) for p in ck.list_checkpoints(tmp_path)] == [1, 2, 3, 4, 5, 10]
    assert ck.prune_checkpoints(tmp_path, None) == []
    removed = ck.prune_checkpoints(tmp_path, keep_last=2, best_path={tmp_path / "epoch_0002.pt"})
    assert sorted(p.name for p in removed) == ["epoch_0001.pt", "epoch_0003.pt", "epoch_0004.pt"]
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0002.pt", "epoch_0005.pt", "epoch_0010.pt"]
    assert (tmp_path / "best.pt").exists() and (tmp_path / "epoch_x.pt").exists()
    ck.prune_checkpoints(tmp_path, keep_last=1, best_path=str(tmp_path / "epoch_0005.pt"))
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0005.pt", "epoch_0010.pt"]
    ck.prune_checkpoints(tmp_path, keep_last=0, keep={tmp_path / "epoch_0005.pt"})
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0005.pt"]
    assert ck.list_checkpoints(tmp_path / "missing") == []
    with pytest.raises(SegkitError, match="keep_last"):
        ck.prune_checkpoints(tmp_path, keep_last=-1)


def test_soup_average_is_exact_and_keeps_integer_buffers_from_last(tmp_path):
    states = []
    for i in range(3):
        m = _model()
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float(i))  # 0, 1, 2 -> mean exactly 1
        m[1].num_batches_tracked.fill_(10 + i)
        states.append(m.state_dict())
    avg = ck.average_state_dicts(states)
    assert torch.equal(avg["0.weight"], torch.ones_like(avg["0.weight"]))
    assert avg["0.weight"].dtype == torch.float32
    assert int(avg["1.num_batches_tracked"]) == 12
    assert torch.equal(avg["1.running_var"], states[0]["1.running_var"])
    paths = [ck.save_checkpoint(tmp_path / ck.checkpoint_name(i), {"model": s}) for i, s in enumerate(states)]
    soup = ck.average_state_dicts([ck.load_checkpoint(p)["model"] for p in paths])
    assert all(torch.equal(soup[k], avg[k]) for k in avg)
    bad = dict(states[0])
    bad.pop("0.bias")
    with pytest.raises(SegkitError, match="different keys"):
        ck.average_state_dicts([states[1], bad])


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    random.random(), np.random.rand(3), torch.rand(2)  # advance away from the seed state
    path = ck.save_checkpoint(tmp_path / "r.pt", {"rng": ck.rng_state()})
    first = (random.random(), np.random.rand(4).tolist(), np.random.randn(), torch.rand(4).tolist())
    ck.set_rng_state(ck.load_checkpoint(path)["rng"])
    again = (random.random(), np.random.rand(4).tolist(), np.random.randn(), torch.rand(4).tolist())
    assert first == again


def test_prune_keeps_everything_while_fewer_than_keep_last(tmp_path):
    for epoch in (1, 2):
        ck.save_checkpoint(tmp_path / ck.checkpoint_name(epoch), {"epoch": epoch})
    assert ck.prune_checkpoints(tmp_path, keep_last=3) == []
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0001.pt", "epoch_0002.pt"]


def test_soup_accumulates_in_float64():
    """1e8 + 1 - 1e8 is 0 in float32: the mean of the three is 1/3 only when summed in float64."""
    states = [{"w": torch.tensor([v], dtype=torch.float32)} for v in (1e8, 1.0, -1e8)]
    avg = ck.average_state_dicts(states)
    assert avg["w"].dtype == torch.float32 and avg["w"].item() == pytest.approx(1 / 3, rel=1e-6)


def _run_dir(tmp_path, epochs, best=None):
    from segkit.runs.rundir import update_run_info

    run = tmp_path / "run"
    for e in epochs:   # real checkpoints, each holding its epoch
        ck.save_checkpoint(run / "checkpoints" / ck.checkpoint_name(e), {"epoch": torch.tensor(e)})
    update_run_info(run, best_epoch=best) if best is not None else update_run_info(run, status="done")
    return run


def test_a_run_directorys_checkpoints_by_spec(tmp_path):
    run = _run_dir(tmp_path, (1, 2, 3, 12), best=2)
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(ck.run_checkpoints(run)) == ["epoch_0012.pt"]          # default: last:1
    assert names(ck.run_checkpoints(run, "last:2")) == ["epoch_0003.pt", "epoch_0012.pt"]
    assert names(ck.run_checkpoints(run, "best")) == ["epoch_0002.pt"]  # the epoch run.json records
    assert names(ck.run_checkpoints(run, "1-3")) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert ck.select_checkpoint(run) == (run / "checkpoints" / "epoch_0002.pt", 2)   # default: best
    assert ck.select_checkpoint(run, " Last ") == (run / "checkpoints" / "epoch_0012.pt", 12)
    assert ck.select_checkpoint(run, 3) == (run / "checkpoints" / "epoch_0003.pt", 3)
    assert int(ck.load_checkpoint(ck.select_checkpoint(run, "1")[0])["epoch"]) == 1
    for which in ("first", "1,2", "-1", "last:2"):
        with pytest.raises(SegkitError, match=rf"^--epoch {which!r}: expected best, last or an epoch number$"):
            ck.select_checkpoint(run, which)
    with pytest.raises(SegkitError, match=r"^--epoch 7: no checkpoint for epoch 7; available epochs: 1, 2, 3, 12$"):
        ck.select_checkpoint(run, 7)
    with pytest.raises(SegkitError, match=r"^--epochs swa: .*run has no weight average \(train it with --set "
                                          r"train.swa_epochs=K\)$"):
        ck.run_checkpoints(run, "swa")
    ck.save_checkpoint(run / "checkpoints" / "swa.pt", {"model": {}})
    assert ck.run_checkpoints(run, " swa ", what="-r") == [run / "checkpoints" / "swa.pt"]
    no_best = _run_dir(tmp_path / "b", (4,))
    with pytest.raises(SegkitError, match=r"^--epoch best: the run records no best epoch \(no validation score\); "
                                          r"available epochs: 4$"):
        ck.select_checkpoint(no_best)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(SegkitError, match=r"empty: no checkpoints in .*empty/checkpoints$"):
        ck.run_checkpoints(empty)
    with pytest.raises(SegkitError, match=r"^checkpoints: the run has no checkpoints$"):
        ck.select_checkpoints({}, "all")
    with pytest.raises(SegkitError, match=r"^--epochs 5: no checkpoint for epoch 5; available epochs: 1$"):
        ck.select_checkpoints({1: "a"}, 5)


def test_checkpoints_sort_by_epoch_past_four_digits_and_save_makes_folders(tmp_path):
    folder = tmp_path / "new" / "checkpoints"           # missing: save_checkpoint creates it
    for e in (10000, 9999, 2):
        ck.save_checkpoint(folder / ck.checkpoint_name(e), {"epoch": torch.tensor(e)})
    assert [p.name for p in ck.list_checkpoints(folder)] == ["epoch_0002.pt", "epoch_9999.pt", "epoch_10000.pt"]
    assert ck.list_checkpoints(tmp_path / "missing") == []


def test_soup_of_mixed_entries_and_its_errors():
    first = {"n": 3, "count": torch.tensor(1), "w": torch.tensor([0.0, 2.0])}
    second = {"n": 4, "count": torch.tensor(5), "w": torch.tensor([1.0, 4.0])}
    out = ck.average_state_dicts([first, second])
    # entries after a non-float one are still averaged; non-floats come from the last dict, copied
    assert list(out) == ["n", "count", "w"] and out["n"] == 4 and int(out["count"]) == 5
    assert out["w"].tolist() == [0.5, 3.0] and out["w"].dtype == torch.float32
    out["count"] += 1
    assert int(second["count"]) == 5
    with pytest.raises(SegkitError, match=r"^average_state_dicts: no state dicts given$"):
        ck.average_state_dicts([])
    with pytest.raises(SegkitError, match=r"^average_state_dicts: state 0 has different keys \(x ...\)$"):
        ck.average_state_dicts([{"w": torch.zeros(1), "x": torch.zeros(1)}, {"w": torch.zeros(1)}])
    with pytest.raises(SegkitError, match=r"^average_state_dicts: w has different shapes \[\(1,\), \(2,\)\]$"):
        ck.average_state_dicts([{"w": torch.zeros(1)}, {"w": torch.zeros(2)}])


def test_unreadable_checkpoints_name_the_cause(tmp_path):
    good = ck.save_checkpoint(tmp_path / "good.pt", {"model": {}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(SegkitError, match=r"cut.pt: not a readable checkpoint \(truncated or foreign file\): "
                                          r"PytorchStreamReader failed reading zip archive"):
        ck.load_checkpoint(cut)
    text = tmp_path / "notes.pt"   # a legacy-format read error, not a refused pickle
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(SegkitError, match=r"notes.pt: not a readable checkpoint \(truncated or foreign file\): "
                                          r"neither torch.save format \(zip or legacy pickle\)$"):
        ck.load_checkpoint(text)
    with pytest.raises(SegkitError, match=r"good.pt: not a segkit checkpoint \(missing epoch, rng\)$"):
        ck.load_checkpoint(good, required_keys=("model", "epoch", "rng"))
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(SegkitError, match=r"list.pt: not a segkit checkpoint \(holds a list, not a dict\)$"):
        ck.load_checkpoint(listed)
