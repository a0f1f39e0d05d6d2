"""Classification figures of docs/benchmarks.md (`--task cls`, `--task seg+cls`), through the real CLI.

    python tools/bench_cls.py --workdir /tmp/bench_cls              # every part, one after the other
    python tools/bench_cls.py --workdir /tmp/bench_cls --part digits

Parts (each a sequence of `segkit` subprocesses, one at a time; results appended to
WORKDIR/results.jsonl and printed):

- digits: tools/make_digits.py, `segkit train --config digits`, `segkit infer --csv` on
  the held-out test split: macro F1, accuracy, wall and CPU seconds (goal: macro F1 >= 0.97).
- corrupted: the digits config trained with the augment_baseline recipe and with
  the augment_heavy_noise recipe, each scored on the clean and the corrupted test split (goal:
  the heavy recipe recovers at least half of the baseline's drop).
- noisy: `segkit oof` on train_noisy.csv (10% flipped labels), `segkit clean`, precision and
  recall of the flagged rows against flipped.csv (goals 0.8 / 0.7), then macro F1 on the test
  split of a run trained on the cleaned manifest vs one trained on the noisy one.
- segcls: configs/sample.yaml trained as seg and as seg+cls (same seed and windows): best
  validation Dice of each; then infer on a mostly empty synthetic slide with infer.cls_gate off
  and on: wall and CPU seconds, tiles gated, and whether the outputs agree where no tile was gated.
- segcls_empty (not in "all"): the gate timing with a seg+cls run whose training data holds empty
  background (see tools/bench_cls_gate.py).

CPU seconds are those of the child processes (resource.getrusage), less sensitive than wall
time to the other jobs on a shared machine; the load average is printed with every result.
Each segkit process runs with OMP_NUM_THREADS=1 unless the environment sets it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAMES = [str(i) for i in range(10)]
# torch threads per segkit process: on a shared, oversubscribed machine a second thread mostly spins
# (measured: 1.5 CPU-s per resnet18 step with 2 threads vs 0.24 with 1 under load 10); set
# OMP_NUM_THREADS to override
THREADS = 1


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def segkit(*args, log: Path) -> tuple[float, float]:
    """Run one `segkit` command; (wall s, CPU s); its output goes to ``log``."""
    wall, cpu = time.time(), _children_cpu()
    with open(log, "a") as handle:
        handle.write(f"\n$ segkit {' '.join(map(str, args))}\n")
        handle.flush()
        done = subprocess.run([sys.executable, "-m", "segkit", *map(str, args)], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(THREADS))})
    if done.returncode:
        sys.exit(f"bench_cls: segkit {' '.join(map(str, args))} failed; see {log}")
    return time.time() - wall, _children_cpu() - cpu


def report(workdir: Path, record: dict) -> None:
    record = {**record, "load_average": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps(record), flush=True)
    with open(workdir / "results.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def digits_data(workdir: Path) -> Path:
    data = workdir / "digits"
    if not (data / "flipped.csv").exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_digits.py"), str(data)], check=True)
    return data


def config_with(workdir: Path, name: str, recipe: str | None = None, **data) -> Path:
    """segkit/configs/digits.yaml with the bench's runs folder, other data keys and optionally a recipe's augment."""
    config = yaml.safe_load((ROOT / "segkit" / "configs" / "digits.yaml").read_text())
    config["run"]["runs_dir"] = str(workdir / "runs")
    config["run"]["progress"] = False
    config["data"].update(data)
    if recipe is not None:
        config["data"]["augment"] = yaml.safe_load((ROOT / "segkit" / "configs" / recipe).read_text())["data"]["augment"]
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def score(pred_csv: Path, truth_csv: Path) -> dict:
    """Macro F1 and accuracy of a `segkit infer --csv` file against a manifest's classes (by id)."""
    sys.path.insert(0, str(ROOT))
    from segkit.metrics.cls import ConfusionAccumulator

    with open(truth_csv, newline="") as handle:
        truth = {row["id"]: NAMES.index(row["class"]) for row in csv.DictReader(handle)}
    with open(pred_csv, newline="") as handle:
        pred = {row["id"]: NAMES.index(row["label"]) for row in csv.DictReader(handle)}
    ids = sorted(truth)
    acc = ConfusionAccumulator(len(NAMES))
    acc.update(np.array([pred[i] for i in ids]), np.array([truth[i] for i in ids]))
    return {"macro_f1": round(acc.macro_f1(), 4), "accuracy": round(acc.accuracy(), 4), "rows": len(ids)}


def train_and_score(workdir: Path, name: str, config: Path, splits: dict[str, Path], log: Path, *extra) -> dict:
    wall, cpu = segkit("train", "--config", config, "--name", name, *extra, log=log)
    out = {"run": name, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1)}
    data = workdir / "digits"
    for split, manifest in splits.items():
        with open(manifest, newline="") as handle:
            images = [data / row["image"] for row in csv.DictReader(handle)]
        pred = workdir / f"{name}_{split}.csv"
        wall, cpu = segkit("infer", *images, "--run", workdir / "runs" / name, "--csv", pred, "--overwrite", log=log)
        out[split] = {**score(pred, manifest), "infer_wall_s": round(wall, 1), "infer_cpu_s": round(cpu, 1)}
    return out


def part_digits(workdir: Path, log: Path) -> None:
    data = digits_data(workdir)
    config = config_with(workdir, "digits", manifest=str(data / "train.csv"))
    report(workdir, {"part": "digits", **train_and_score(workdir, "digits", config, {"test": data / "test.csv"}, log)})


def part_corrupted(workdir: Path, log: Path) -> None:
    data = digits_data(workdir)
    splits = {"test": data / "test.csv", "test_corrupted": data / "test_corrupted.csv"}
    results = {}
    for recipe in ("augment_baseline.yaml", "augment_heavy_noise.yaml"):
        name = recipe.removesuffix(".yaml")
        config = config_with(workdir, name, recipe, manifest=str(data / "train.csv"))
        results[name] = train_and_score(workdir, name, config, splits, log)
    base, heavy = results["augment_baseline"], results["augment_heavy_noise"]
    drop = base["test"]["macro_f1"] - base["test_corrupted"]["macro_f1"]
    recovered = heavy["test_corrupted"]["macro_f1"] - base["test_corrupted"]["macro_f1"]
    report(workdir, {"part": "corrupted", **results, "drop": round(drop, 4), "recovered": round(recovered, 4),
                     "recovered_share": round(recovered / drop, 3) if drop > 0 else None})


def part_noisy(workdir: Path, log: Path, folds: int, oof_epochs: int) -> None:
    data = digits_data(workdir)
    noisy = config_with(workdir, "noisy", manifest=str(data / "train_noisy.csv"))
    wall, cpu = segkit("oof", "--config", noisy, "--folds", folds, "--name", "noisy-oof", "--set",
                       f"train.epochs={oof_epochs}", "--out", workdir / "oof.csv", "--overwrite", log=log)
    (workdir / "cleaned").mkdir(exist_ok=True)
    segkit("clean", "--oof", workdir / "oof.csv", "--manifest", data / "train_noisy.csv",
           "--out", workdir / "cleaned" / "train_clean.csv", "--overwrite", log=log)
    with open(data / "flipped.csv", newline="") as handle:
        flipped = {row["id"] for row in csv.DictReader(handle)}
    with open(workdir / "cleaned" / "label_issues.csv", newline="") as handle:
        flagged = {row["id"] for row in csv.DictReader(handle)}
    hits = len(flipped & flagged)
    cleaning = {"flipped": len(flipped), "flagged": len(flagged), "true_flags": hits,
                "precision": round(hits / max(1, len(flagged)), 4), "recall": round(hits / len(flipped), 4),
                "oof_wall_s": round(wall, 1), "oof_cpu_s": round(cpu, 1), "folds": folds, "oof_epochs": oof_epochs}
    cleaned = config_with(workdir, "cleaned", manifest=str(workdir / "cleaned" / "train_clean.csv"))
    test = {"test": data / "test.csv"}
    report(workdir, {"part": "noisy", "clean": cleaning,
                     "trained_on_noisy": train_and_score(workdir, "on_noisy", noisy, test, log),
                     "trained_on_cleaned": train_and_score(workdir, "on_cleaned", cleaned, test, log)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_cls"))
    parser.add_argument("--part", choices=["all", "digits", "corrupted", "noisy", "segcls", "segcls_empty"], default="all")
    parser.add_argument("--folds", type=int, default=4, help="oof folds of the noisy part")
    parser.add_argument("--oof-epochs", type=int, default=6, help="epochs of each oof fold run")
    parser.add_argument("--seg-epochs", type=int, default=4, help="epochs of each nuclei run (segcls part)")
    parser.add_argument("--seg-windows", type=int, default=128, help="windows per epoch of each nuclei run")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "segkit.log"
    parts = ["digits", "corrupted", "noisy", "segcls"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "digits":
            part_digits(args.workdir, log)
        elif part == "corrupted":
            part_corrupted(args.workdir, log)
        elif part == "noisy":
            part_noisy(args.workdir, log, args.folds, args.oof_epochs)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_cls_gate import part_segcls, part_segcls_empty  # the seg+cls parts live in their own file

            run_part = part_segcls if part == "segcls" else part_segcls_empty
            run_part(args.workdir, log, args.seg_epochs, args.seg_windows, segkit=segkit, report=report)


if __name__ == "__main__":
    main()
