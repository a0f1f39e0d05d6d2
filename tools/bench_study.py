"""The study loop's figures of docs/benchmarks.md, through the real CLI in subprocesses, one at a time.

  tune:    an N-trial `segkit tune` (TPE + median pruner) of a tiny config on the bundled sample,
           against one run of the same tiny config with the default values of the searched keys:
           wall time and CPU seconds of the search, best trial's validation Dice vs the default's.
  search:  the quick-start demo run (train --config configs/sample.yaml, finetune --size 256), then
           `segkit evaluate --run FINETUNE --search`: validation Dice before and after the
           post-processing search (threshold, minimum object size, original TTA view's weight).

CPU seconds (children's user + system time) move less than wall time when other jobs share the
machine; the load average is printed at the start and the end. On a crowded machine run it with
OMP_NUM_THREADS=1: OpenMP threads spin while they wait for a core, which inflates CPU seconds.

    python tools/bench_study.py tune --trials 8       # ~2-5 min on 2 busy cores
    python tools/bench_study.py tune --trials 8 --epochs 6   # trials of 6 epochs instead of 3
    python tools/bench_study.py search                # ~5-10 min (trains the demo run)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = """# a tiny config of the sample: 3 short epochs at 64 px over a 128 px field of view
data: {manifest: sample, fov_px: 128, size: 64, stats_windows: 16}
model: {encoder: resnet18}
train: {epochs: 3, windows_per_epoch: 48, batch_size: 8, scheduler: onecycle}
infer: {tta: none, epochs: best, overlap_px: 32}
run: {progress: false}
"""
SPACE = """train.lr: {low: 3.0e-4, high: 1.0e-2, log: true}
data.foreground_share: {low: 0.1, high: 0.8}
train.weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}
"""


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def segkit(*args: str, cwd: Path) -> tuple[str, float, float]:
    """Run one segkit command; (stdout, wall seconds, CPU seconds)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    started, cpu = time.perf_counter(), cpu_children()
    done = subprocess.run([sys.executable, "-m", "segkit", *args], capture_output=True, text=True, env=env, cwd=cwd)
    wall, cpu = time.perf_counter() - started, cpu_children() - cpu
    if done.returncode != 0:
        sys.exit(f"segkit {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout, wall, cpu


def best_dice(run_dir: Path) -> float:
    return max(json.loads(line)["val_dice"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def bench_tune(trials: int, work: Path, epochs: int | None) -> None:
    (work / "tiny.yaml").write_text(TINY.replace("epochs: 3,", f"epochs: {epochs},") if epochs else TINY)
    (work / "space.yaml").write_text(SPACE)
    out, wall, cpu = segkit("train", "--config", "tiny.yaml", "--name", "default", cwd=work)
    default = best_dice(work / "runs" / "default")
    print(f"default tiny config: val dice {default:.4f}  ({wall:.0f} s wall, {cpu:.0f} CPU s)", flush=True)
    out, wall, cpu = segkit("tune", "--config", "tiny.yaml", "--space", "space.yaml", "--trials", str(trials), cwd=work)
    print(out.strip())
    best = float(re.search(r"best: (\d\.\d+)", out).group(1))
    pruned = out.count(": pruned (")
    print(f"tune {trials} trials: {wall:.0f} s wall, {cpu:.0f} CPU s, {pruned} pruned; best val dice {best:.4f} vs "
          f"default {default:.4f} ({best - default:+.4f})", flush=True)


def bench_search(work: Path, stage1_only: bool, epochs: int | None) -> None:
    sample = "sample"  # the recipe shipped in segkit/configs (there is no configs/ folder at the root)
    shorter = ["--epochs", str(epochs)] if epochs else []
    _, wall1, cpu1 = segkit("train", "--config", str(sample), "--name", "demo128", "--set", "run.progress=false",
                            *shorter, cwd=work)
    print(f"demo stage 1: train {wall1:.0f} s ({cpu1:.0f} CPU s); best val dice {best_dice(work / 'runs' / 'demo128'):.4f}",
          flush=True)
    run = "demo128"
    if not stage1_only:
        _, wall2, cpu2 = segkit("finetune", "--from", "demo128", "--size", "256", "--epochs", "3", "--lr", "1e-3",
                                "--name", "demo256", "--set", "train.windows_per_epoch=128", "--set",
                                "run.progress=false", cwd=work)
        print(f"demo stage 2: finetune {wall2:.0f} s ({cpu2:.0f} CPU s); "
              f"best val dice {best_dice(work / 'runs' / 'demo256'):.4f}", flush=True)
        run = "demo256"
    out, wall, cpu = segkit("evaluate", "--run", run, "--search", cwd=work)
    print(out.strip())
    print(f"evaluate --search: {wall:.0f} s wall, {cpu:.0f} CPU s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("tune", "search"))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--stage1-only", action="store_true", help="search: evaluate the demo's first stage (no finetune).")
    parser.add_argument("--epochs", type=int, default=None,
                        help="tune: epochs of the tiny config (default 3); search: epochs of the demo's first stage (default 8).")
    parser.add_argument("--workdir", default=None, help="Keep the runs here (default: a temporary folder).")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="segkit-bench-study-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.which == "tune":
            bench_tune(args.trials, work, args.epochs)
        else:
            bench_search(work, args.stage1_only, args.epochs)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
