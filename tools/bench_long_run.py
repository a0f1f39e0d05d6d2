"""A long run of short epochs: does resident memory stay flat, do open files stay bounded?

Trains the tests' tiny project (two 90x133 disc images, validation every epoch, a checkpoint
every epoch) for EPOCHS epochs of one step each with the smallest smp encoder, and records per
epoch (through fit's epoch hook, in the training process) the resident set size, the open file
descriptors and the threads. Prints them at the start and the end, the slope of RSS over the last
half (MiB per 100 epochs), and CPU seconds next to wall time.

    python tools/bench_long_run.py [--epochs 200] [--workers 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from conftest import write_tiny_project

    from segkit.ground.config import load_config
    from segkit.train.fit import fit

    root = write_tiny_project(Path(tempfile.mkdtemp(prefix="segkit-long-")) / "p")
    config = load_config(root / "tiny.yaml", [
        f"train.epochs={args.epochs}", "train.windows_per_epoch=4", "train.batch_size=4", "train.keep_last=2",
        "data.fov_px=32", "data.size=32", "model.encoder=timm-mobilenetv3_small_minimal_100", "infer.tta=none",
        "infer.epochs=last:1", f"data.workers={args.workers}", "run.name=long"])
    samples: list[tuple[int, float, int, int]] = []

    def probe(run_dir: Path, record: dict) -> None:
        samples.append((int(record["epoch"]), _rss_mib(), len(os.listdir("/proc/self/fd")), threading.active_count()))
        if samples[-1][0] % 10 == 0:  # partial figures survive an interrupted benchmark
            print("sample epoch {} RSS {:.1f} MiB fds {} threads {} cpu {:.0f} s".format(
                *samples[-1], time.process_time()), flush=True)

    started, cpu = time.time(), time.process_time()
    fit(config, hooks=[probe])
    wall, cpu = time.time() - started, time.process_time() - cpu
    half = samples[len(samples) // 2:]
    slope = (half[-1][1] - half[0][1]) / max(1, half[-1][0] - half[0][0]) * 100
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.epochs} epochs (1 step of 4 windows at 32 px, validation and a checkpoint every epoch), "
          f"workers {args.workers}")
    for label, (epoch, rss, fds, threads) in (("start", samples[0]), ("middle", samples[len(samples) // 2]),
                                              ("end", samples[-1])):
        print(f"  {label:6s} epoch {epoch:4d}: RSS {rss:7.1f} MiB, open fds {fds:3d}, threads {threads}")
    print(f"  RSS slope over the second half: {slope:+.2f} MiB per 100 epochs; peak RSS {peak:.1f} MiB")
    print(f"  max open fds {max(s[2] for s in samples)}; wall {wall:.0f} s, CPU {cpu:.0f} s; "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
