"""DDP helpers: no-ops in one process; a real 2-process gloo run on CPU ends with identical weights."""

import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from segkit.ground.errors import SegkitError
from segkit.runs import distributed as d
from loop_eval import evaluate
from segkit.train.loop import train_one_epoch

WORLD = 2


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 1, 1))


def _batches(rank):
    g = torch.Generator().manual_seed(10 + rank)  # every rank sees different data
    out = []
    for _ in range(4):
        image = torch.rand(3, 3, 11, 9, generator=g)
        out.append({"image": image, "mask": (image[:, 1] > 0.5).to(torch.uint8)})
    return out


def _bce(logits, mask):  # plain torch loss: spawned workers skip importing smp
    return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())


def _worker(rank, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = d.setup(device="cpu", timeout_s=60)  # a broken rank fails the test instead of hanging it
    model = d.wrap_ddp(_net(seed=100 + rank))  # different init per rank: DDP broadcasts rank 0's
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = _bce
    out = train_one_epoch(model, _batches(rank), loss, opt, device="cpu", amp=False, accumulate=2,
                          progress=False, channels_last=False)
    # a loader without len() and a short last group (3 batches, accumulate 2) must stay in sync too
    train_one_epoch(model, iter(_batches(rank)[:3]), loss, opt, device="cpu", amp=False, accumulate=2,
                    progress=False, channels_last=False)
    val = evaluate(model, _batches(rank)[:1], loss, device="cpu", classes=1)
    weights = {k: v.clone() for k, v in d.unwrap(model).state_dict().items()}  # before the NaN phase
    result = {"state": weights, "loss": out["loss"], "steps": out["steps"],
              "dice": val["dice"], "mean": d.all_reduce_mean({"r": float(rank), "x": 2.0}),
              "main": d.is_main(), "rank": d.rank(), "world": d.world_size(), "backend": info.backend}
    # a NaN on one rank only must stop both (the other would otherwise hang in the all-reduce)
    bad = _batches(rank)[:2]
    if rank == 1:
        bad[1]["image"][0, 0, 0, 0] = float("nan")
    try:
        train_one_epoch(model, bad, loss, opt, device="cpu", amp=False, progress=False, channels_last=False)
        result["nan"] = ""
    except SegkitError as e:
        result["nan"] = str(e)
    d.barrier()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    d.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ranks_end_identical(tmp_path):
    # fork: the workers skip re-importing torch (they set 1 thread first, as DataLoader workers do);
    # DDP's constructor imports torch._dynamo (seconds): import it once here, before forking
    import torch._dynamo  # noqa: F401

    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["loss"] == r1["loss"] and r0["dice"] == r1["dice"] and r0["steps"] == 2
    assert r0["mean"] == {"r": 0.5, "x": 2.0} == r1["mean"]
    assert (r0["main"], r1["main"], r0["rank"], r1["rank"]) == (True, False, 0, 1)
    assert r0["world"] == 2 and r0["backend"] == "gloo"
    assert "NaN at step 2" in r0["nan"] and "NaN at step 2" in r1["nan"]
    # DDP averages gradients: same as one process on both ranks' batches from rank 0's init
    single = _net(seed=100)
    opt = torch.optim.SGD(single.parameters(), lr=0.5)
    merged = [{k: torch.cat([a[k], b[k]]) for k in a} for a, b in zip(_batches(0), _batches(1))]
    for data in (merged, iter(merged[:3])):
        train_one_epoch(single, data, _bce, opt, device="cpu", amp=False, accumulate=2, progress=False,
                        channels_last=False)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, r0["state"][k], atol=1e-5), k


def test_helpers_are_no_ops_without_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = d.setup(device="cpu")
    assert (info.rank, info.world_size, info.backend) == (0, 1, None)
    assert d.is_main() and d.rank() == 0 and d.world_size() == 1 and not d.is_distributed()
    model = nn.Linear(2, 2)
    assert d.wrap_ddp(model) is model and d.unwrap(model) is model
    assert d.all_reduce_mean({"a": 1, "b": 2.5}) == {"a": 1.0, "b": 2.5}
    assert d.all_gather_objects({"x": 1}) == [{"x": 1}]
    d.barrier()
    d.cleanup()
