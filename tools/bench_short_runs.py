"""Short and long default runs on the bundled sample, several seeds, variants side by side.

What a new user tries first is a short run: `segkit train --config sample --size 64 --epochs 2`.
This tool trains each case (a set of `segkit train` arguments) with each variant (extra `--set`
overrides, e.g. the old default learning rate) for every seed, one `segkit train` subprocess at a
time, alternating variants per seed so machine load falls on both alike, and prints the best and
last validation Dice of every run, then per case and variant the mean and spread (sample standard
deviation) over the seeds, with the processes' CPU seconds next to their wall time.

    python tools/bench_short_runs.py --seeds 42,43,44
    python tools/bench_short_runs.py --case "tiny:--size 64 --epochs 2 --set train.windows_per_epoch=32" \
        --variant "old:train.lr_full_steps=0" --variant "new:"

Cases default to SHORT and LONG below; variants default to the old fixed peak lr ("old",
train.lr_full_steps=0) and today's default ("new").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "short": "--config sample --size 64 --epochs 2 --set train.windows_per_epoch=64",   # 16 optimizer steps
    "short128": "--config sample --size 64 --epochs 2 --set train.windows_per_epoch=128",  # 32 steps
    "long": "--config sample --size 64 --epochs 4",                                    # 128 steps
}
VARIANTS = {"old": "train.lr_full_steps=0", "new": ""}


def _pair(text: str, known: dict) -> tuple[str, str]:
    name, _, value = text.partition(":")
    return (name, known[name]) if not value and name in known else (name, value)


def train_once(case_args: str, sets: str, seed: int, workdir: Path, threads: int) -> dict:
    """One `segkit train` subprocess; returns its per-epoch validation Dice, wall and CPU seconds."""
    name = f"r{len(list(workdir.iterdir()))}"
    command = [sys.executable, "-m", "segkit.cli", "train", *shlex.split(case_args), "--name", name,
               "--runs-dir", str(workdir), "--set", "run.progress=false", "--set", f"run.seed={seed}"]
    for item in filter(None, sets.split(",")):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    lines = (workdir / name / "metrics.jsonl").read_text().splitlines()
    dice = [json.loads(line)["val_dice"] for line in lines]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"dice": dice, "wall": wall, "cpu": cpu}


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {sd:.3f} (min {min(values):.3f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,43,44", help="run.seed values, comma separated")
    parser.add_argument("--case", action="append", default=None,
                        help=f"NAME[:segkit train args]; known: {', '.join(CASES)} (default: short, long)")
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME[:key=value,...] extra --set overrides; known: old, new (default: both)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [_pair(c, CASES) for c in (args.case or ["short", "long"])]
    variants = [_pair(v, VARIANTS) for v in (args.variant or ["old", "new"])]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="segkit-bench-short-") as tmp:
        for case, case_args in cases:
            for seed in seeds:
                for variant, sets in variants:
                    r = train_once(case_args, sets, seed, Path(tmp), args.threads)
                    results.setdefault((case, variant), []).append(r)
                    curve = ", ".join(f"{d:.3f}" for d in r["dice"])
                    print(f"{case:>9} {variant:>6} seed {seed}: val dice per epoch {curve}  "
                          f"({r['wall']:.0f} s wall, {r['cpu']:.0f} CPU s)", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print("\n| case | variant | best val Dice, mean +- sd (min) | last epoch | CPU s per run | wall s per run |")
    print("|---|---|---|---|---|---|")
    for (case, variant), runs in results.items():
        print(f"| {case} | {variant} | {_spread([max(r['dice']) for r in runs])} | "
              f"{_spread([r['dice'][-1] for r in runs])} | {statistics.fmean(r['cpu'] for r in runs):.0f} | "
              f"{statistics.fmean(r['wall'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
