"""Progressive training vs direct training at full resolution: wall time to a validation Dice.

On the bundled nuclei sample (segkit/configs/sample.yaml, `--config sample`: field of view 256 px) this runs, through the
real CLI in subprocesses, one after the other in one invocation:

  direct:       segkit train --size 256                     (full resolution from the start)
  progressive:  segkit train --size 128  ->  segkit finetune --size 256 (same 256 px field of view)

and reports, for each, the time until the validation Dice (the tiled predictor on the held-out
rows, after every epoch) first reaches --target: the summed epoch times (training + validation,
from metrics.jsonl), as wall seconds and as CPU seconds of the process (the latter moves less
when other work shares the machine). The progressive schedule counts
its whole low-resolution stage plus the finetune epochs until the target (or the low stage's
epochs when it already reaches it at 128).

    python tools/bench_progressive.py --target 0.90     # about 10-15 minutes on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def segkit(*args: str) -> float:
    """Run one segkit command; returns its wall time in seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segkit.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"segkit {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-2000:]}")
    print("   ", done.stdout.strip().splitlines()[-1], flush=True)
    return seconds


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def time_to(records: list[dict], target: float, offset: float = 0.0, key: str = "seconds"):
    """(epoch seconds until the first record with val_dice >= target, that epoch) or (None, None)."""
    total = offset
    for record in records:
        total += record[key]
        if record["val_dice"] >= target:
            return total, record["epoch"]
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sample")
    parser.add_argument("--target", type=float, default=0.90, help="Validation Dice to reach.")
    parser.add_argument("--windows", type=int, default=64, help="Windows per epoch (every stage).")
    parser.add_argument("--direct-epochs", type=int, default=6, help="Epochs of the direct 256 run.")
    parser.add_argument("--low-epochs", type=int, default=6, help="Epochs of the 128 stage.")
    parser.add_argument("--high-epochs", type=int, default=3, help="Epochs of the 256 finetune.")
    parser.add_argument("--low", type=int, default=128, help="Network size of the first stage.")
    parser.add_argument("--high", type=int, default=256, help="Network size of the finetune and the direct run.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None, help="Where the runs go (default: a temporary folder).")
    args = parser.parse_args()

    runs = Path(args.workdir or tempfile.mkdtemp(prefix="bench_progressive_"))
    common = ["--config", args.config, "--set", f"run.runs_dir={runs}", "--set", "run.progress=false",
              "--set", f"train.windows_per_epoch={args.windows}", "--set", f"run.seed={args.seed}"]
    print(f"runs in {runs}; {args.windows} windows/epoch; target val Dice {args.target}", flush=True)

    print(f"direct: train --size {args.high} --epochs {args.direct_epochs}", flush=True)
    direct_wall = segkit("train", *common, "--size", str(args.high), "--epochs", str(args.direct_epochs),
                         "--name", "direct")
    print(f"progressive: train --size {args.low} --epochs {args.low_epochs}, "
          f"finetune --size {args.high} --epochs {args.high_epochs}", flush=True)
    low_wall = segkit("train", *common, "--size", str(args.low), "--epochs", str(args.low_epochs), "--name", "low")
    high_wall = segkit("finetune", "--from", str(runs / "low"), "--size", str(args.high), "--epochs",
                       str(args.high_epochs), "--name", "high", "--runs-dir", str(runs), "--set", "run.progress=false")

    direct, low, high = metrics(runs / "direct"), metrics(runs / "low"), metrics(runs / "high")
    print("\nval Dice per epoch")
    print(f"  direct {args.high}:      " + " ".join(f"{r['val_dice']:.3f}" for r in direct))
    print(f"  stage {args.low}:       " + " ".join(f"{r['val_dice']:.3f}" for r in low))
    print(f"  finetune {args.high}:    " + " ".join(f"{r['val_dice']:.3f}" for r in high))
    print(f"\nepoch seconds: direct {sum(r['seconds'] for r in direct):.1f} for {len(direct)} epochs; "
          f"stage {args.low} {sum(r['seconds'] for r in low):.1f} for {len(low)}; finetune {sum(r['seconds'] for r in high):.1f} "
          f"for {len(high)}")
    print(f"process wall: direct {direct_wall:.1f} s; progressive {low_wall + high_wall:.1f} s "
          f"({low_wall:.1f} + {high_wall:.1f})")

    for key, label in (("seconds", "wall"), ("cpu_seconds", "cpu")):
        print(f"\ntime to a val Dice, summed epoch {label} seconds (training + validation)")
        low_total = sum(r[key] for r in low)
        for target in sorted({round(args.target - 0.1, 2), round(args.target - 0.05, 2), args.target,
                              round(args.target + 0.03, 2)}):
            d_time, d_epoch = time_to(direct, target, key=key)
            p_time, p_epoch = time_to(low, target, key=key)
            where = f"stage {args.low} epoch {p_epoch}"
            if p_time is None:
                p_time, p_epoch = time_to(high, target, offset=low_total, key=key)
                where = f"finetune epoch {p_epoch}"
            d_text = f"{d_time:.1f} s (epoch {d_epoch})" if d_time is not None else "not reached"
            p_text = f"{p_time:.1f} s ({where})" if p_time is not None else "not reached"
            ratio = f"  ratio progressive/direct {p_time / d_time:.2f}" if d_time and p_time else ""
            print(f"  Dice >= {target:.2f}: direct {d_text}; progressive {p_text}{ratio}")
    best_d, best_p = max(r["val_dice"] for r in direct), max(r["val_dice"] for r in low + high)
    print(f"best val Dice: direct {best_d:.4f}; progressive {best_p:.4f} (final finetune {high[-1]['val_dice']:.4f})")


if __name__ == "__main__":
    main()
