"""`segkit auto` against the best hand recipe of a small grid and the bare loop, at equal budgets, side by side.

Datasets (made under --workdir; each a manifest with a training and a validation fold):
    nuclei          the bundled sample, pixel masks (Dice)
    nuclei-objects  the same with instance ids (object F1 at IoU 0.5)
    nuclei-u16      the nuclei stored as uint16 = 1000 + 12 x value (a plan that ignores bit depth shows it)
    scene           tools/make_scene.py's aerial-like scene, building masks (Dice)
    scene-x0.5      the scene resampled to half its pixel size (objects half as wide)
    scene-x2        the scene resampled to twice its pixel size
    digits          tools/make_digits.py, --task cls (macro F1 on the validation fold)
Arms, each with every seed (--seeds) and budget (--budgets: seconds of training plus the empirical stage, counted
as process CPU seconds by default so that arms get the same computation on a shared machine; --clock wall counts
wall seconds, the time contract a user sees):
    auto   segkit.workflows.auto.run_auto (plan -> train -> empirical stage); its probe is not in the budget
           (budget_used: the seconds the budget covers, by the same clock; wall and cpu next to it)
    grid   the best of a small grid of hand recipes (fov x downscale x epochs; windows per epoch sized to the
           budget from the same probe), picked by its own validation score (optimistic for the grid)
    bare   tools/bench_baseline.py's bare loop (AdamW 1e-3, Dice + BCE, no validation) for the same wall
           seconds (seg datasets with uint8 images only: its input scaling assumes uint8)
Scores: auto and grid through `segkit evaluate --run` (the infer path: the run's infer defaults, TTA,
checkpoints, minimum object size); bare through the same tiled predictor without TTA.

    python tools/bench_auto.py --quick                      # nuclei + scene, 1 seed, 60 s, 2 grid points
    python tools/bench_auto.py --budgets 180,600 --seeds 3  # the full table (hours on a shared CPU)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

from segkit.ground.config import load_config  # noqa: E402

TOOLS = Path(__file__).resolve().parent
SAMPLE = TOOLS.parent / "segkit" / "sample"
DATASETS = ("nuclei", "nuclei-objects", "nuclei-u16", "scene", "scene-x0.5", "scene-x2", "digits")
GRID = [(fov, down, epochs) for fov in (128, 256) for down in (1, 2) for epochs in (3, 8)]
QUICK_GRID = [(256, 2, 4), (128, 1, 4)]
BARE = ("nuclei", "scene", "scene-x0.5", "scene-x2")  # uint8 pixel-mask datasets (the bare loop scales by 255)


def _resampled(src: Path, out: Path, scale: float = 1.0, u16: bool = False) -> Path:
    """A single-image manifest folder resampled by ``scale`` and/or stored as uint16 with an offset."""
    out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader((src / "manifest.csv").open()))
    image = tifffile.imread(src / rows[0]["image"])
    mask = cv2.imread(str(src / rows[0]["label"]), cv2.IMREAD_UNCHANGED)
    h, w = image.shape[:2]
    size = (int(round(w * scale)), int(round(h * scale)))
    if scale != 1:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    if u16:
        image = (1000 + 12 * image.astype(np.uint16)).astype(np.uint16)
    tifffile.imwrite(out / "image.tif", image)
    cv2.imwrite(str(out / "mask.png"), mask)
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "label", "region", "fold"])
        writer.writeheader()
        for row in rows:
            region = ",".join(str(int(round(int(v) * scale))) for v in row["region"].split(","))
            writer.writerow({"id": row["id"], "image": "image.tif", "label": "mask.png", "region": region,
                             "fold": row["fold"]})
    return out / "manifest.csv"


def prepare(name: str, work: Path) -> tuple[str, str]:
    """(manifest, task) of a dataset, made under ``work`` on first use."""
    if name == "nuclei":
        return str(SAMPLE / "manifest.csv"), "seg"
    if name == "nuclei-objects":
        return str(SAMPLE / "manifest_instances.csv"), "seg"
    if name == "nuclei-u16":
        return str(_resampled(SAMPLE, work / name, u16=True)), "seg"
    if name == "digits":
        if not (work / "digits" / "train.csv").exists():
            subprocess.run([sys.executable, str(TOOLS / "make_digits.py"), str(work / "digits"), "--per-class", "60"],
                           check=True, capture_output=True)
        return str(work / "digits" / "train.csv"), "cls"
    if not (work / "scene" / "manifest.csv").exists():
        subprocess.run([sys.executable, str(TOOLS / "make_scene.py"), str(work / "scene")], check=True,
                       capture_output=True)
    if name == "scene":
        return str(work / "scene" / "manifest.csv"), "seg"
    return str(_resampled(work / "scene", work / name, scale=float(name.split("x")[1]))), "seg"


def base_overrides(manifest: str, task: str, seed: int, runs: Path) -> list[str]:
    fold = ["data.val_fold=0"] if task == "seg" else ["data.fold_method=stratified"]
    return [f"data.manifest={manifest}", f"task={task}", f"run.seed={seed}", f"run.runs_dir={runs}",
            "run.progress=false", *fold]


def score_run(run_dir: Path, task: str) -> dict:
    """The run scored as `infer` predicts (seg: segkit evaluate --run; cls: the run's validation macro F1)."""
    if task == "cls":
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        return {"f1": max(r.get("val_f1", 0.0) for r in records)}
    from segkit.workflows.evaluate_run import EvaluateRequest, evaluate

    config = load_config(run_dir / "config.yaml")
    out = Path(tempfile.mkdtemp()) / "report.html"
    summary = evaluate(EvaluateRequest(config, run=str(run_dir), out=str(out), device="cpu"),
                       echo=lambda _: None)["evaluation"]["summary"]
    return {"dice": summary.get("dice"), "object_f1": summary.get("object_f1")}


def drop_checkpoints(runs: Path, name: str) -> None:
    """Scored runs keep their records but not their weights (a run of resnet18 checkpoints is ~400 MB)."""
    import shutil

    for folder in runs.glob(f"{name}*/checkpoints"):
        shutil.rmtree(folder, ignore_errors=True)


def arm_auto(manifest, task, seed, budget, runs, name, clock) -> dict:
    from functools import partial

    from segkit.workflows.auto import run_auto
    from segkit.workflows.budget import probe_throughput
    from segkit.workflows.plan import make_plan

    config = load_config(None, base_overrides(manifest, task, seed, runs) + [f"run.name={name}"])
    plan = make_plan(config, budget_s=budget, probe=partial(probe_throughput, clock=clock, fresh=True))
    started, cpu = time.time(), time.process_time()
    summary = run_auto(config, budget_s=budget, echo=lambda _: None, plan=plan, clock=clock)
    scores = score_run(Path(summary["run"]), task)
    drop_checkpoints(runs, name)
    return {**scores, "wall": round(time.time() - started, 1),
            "cpu": round(time.process_time() - cpu, 1), "budget_used": summary["wall_s"],
            "stages": 2 if plan.config.train.finetune_size else 1, "notes": summary.get("notes", [])}


def arm_grid(manifest, task, seed, budget, runs, name, grid, clock) -> dict:
    """Each grid point trained within the budget (windows per epoch from the probe); the best by validation."""
    from segkit.train.fit import fit
    from segkit.workflows.auto import deadline_hook
    from segkit.workflows.budget import probe_throughput

    best = None
    points = grid if task == "seg" or all(fov is None for fov, _, _ in grid) else sorted(
        {(None, 1, e) for _, _, e in grid} | {(None, 1, 2 * e) for _, _, e in grid})
    for fov, down, epochs in points:
        keys = [f"data.fov_px={fov}", f"data.size={fov // down}"] if fov else ["data.size=32"]
        config = load_config("sample" if task == "seg" else "digits",
                             base_overrides(manifest, task, seed, runs) + keys + [f"train.epochs={epochs}"])
        tp = probe_throughput(config, clock=clock, fresh=True)
        steps = max(1, int((budget - tp.startup_s - epochs * tp.val_s) / epochs / tp.step_s))
        config = load_config(None, [f"run.name={name}-{fov}-{down}-{epochs}",
                                    f"train.windows_per_epoch={steps * tp.batch_size}"], base=config)
        run = fit(config, hooks=[deadline_hook(clock() + budget, clock)])
        scores = score_run(run, task)
        drop_checkpoints(runs, run.name)
        key = scores.get("object_f1") if "objects" in manifest else scores.get("dice", scores.get("f1"))
        if best is None or (key or 0) > best[0]:
            best = ((key or 0), {**scores, "recipe": f"fov {fov} /{down} x{epochs}", "point": [fov, down, epochs]})
    return best[1]


def arm_bare(manifest, seed, budget, clock) -> dict:
    sys.path.insert(0, str(TOOLS))
    from bench_baseline import BareLoop, read_image, score

    from segkit.train import from_config as fc

    folder = Path(manifest).parent
    data_ = read_image(folder)
    config = load_config("sample", [f"data.manifest={manifest}", "data.val_fold=0", f"run.seed={seed}"])
    config = fc.with_fov(config)
    data = fc.training_data(config)
    channels = fc.preprocess_for(config, data).channels
    bare = BareLoop(data_["image"], data_["mask"], data_["train"], config.data.fov_px, config.data.size, seed)
    bare.train_until(budget, clock=clock)  # the seconds auto's budget is measured in
    dice = score([(bare.model, 1.0)], data.val_pairs, bare.preprocess(channels), fc.validation_settings(config), "none")
    return {"dice": round(dice, 4), "steps": bare.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", choices=DATASETS)
    parser.add_argument("--budgets", default="180,600", help="seconds, comma-separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=42,
                        help="seeds are first-seed, first-seed+1, ... (to add seeds to a table measured before)")
    parser.add_argument("--arms", default="auto,grid,bare")
    parser.add_argument("--quick", action="store_true", help="nuclei + scene, 1 seed, 60 s, 2 grid points")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="what a budget counts: process CPU seconds (arms get the same computation on a shared "
                             "machine) or wall seconds (the time contract a user sees)")
    parser.add_argument("--grid-once", action="store_true",
                        help="search the grid on the first seed only; the other seeds train its best point")
    parser.add_argument("--grid", default=None, help="grid points fov:downscale:epochs, comma-separated")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.time
    datasets = args.dataset or (["nuclei", "scene"] if args.quick else list(DATASETS))
    budgets = [60.0] if args.quick and args.budgets == "180,600" else [float(b) for b in args.budgets.split(",")]
    seeds = [args.first_seed + k for k in range(1 if args.quick else args.seeds)]
    grid = QUICK_GRID if args.quick else GRID
    if args.grid:
        grid = [tuple(int(v) for v in point.split(":")) for point in args.grid.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_auto_"))
    print(f"work {work}; budgets in {args.clock} seconds; torch threads {args.threads}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
          flush=True)
    rows, chosen = [], {}
    for dataset in datasets:
        manifest, task = prepare(dataset, work)
        for budget in budgets:
            for seed in seeds:
                row = {"dataset": dataset, "budget": budget, "seed": seed}
                tag = f"{dataset}-{int(budget)}-{seed}"
                if "auto" in args.arms:
                    row["auto"] = arm_auto(manifest, task, seed, budget, work / "runs", f"auto-{tag}", clock)
                if "grid" in args.arms:
                    # the grid is searched on the first seed; its best point is then trained with the other seeds
                    points = grid if seed == seeds[0] or not args.grid_once else [tuple(chosen[(dataset, budget)])]
                    row["grid"] = arm_grid(manifest, task, seed, budget, work / "runs", f"grid-{tag}", points, clock)
                    chosen.setdefault((dataset, budget), row["grid"]["point"])
                if "bare" in args.arms and dataset in BARE:
                    row["bare"] = arm_bare(manifest, seed, budget, clock)
                rows.append(row)
                print(json.dumps(row), flush=True)
    table(rows)
    print(f"load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def table(rows: list[dict]) -> None:
    """Mean and spread (std over seeds) per dataset, budget and arm."""
    print("\n| dataset | budget s | metric | auto | grid (best) | bare | auto - grid | auto - bare | auto: budget used |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["budget"]), []).append(row)
    for (dataset, budget), group in groups.items():
        metric = "object_f1" if "objects" in dataset else "f1" if dataset == "digits" else "dice"
        cells, means = [], {}
        for arm in ("auto", "grid", "bare"):
            values = [r[arm][metric] for r in group if r.get(arm) and r[arm].get(metric) is not None]
            means[arm] = float(np.mean(values)) if values else None
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f} (n={len(values)})" if values else "-")
        diff = [f"{means['auto'] - means[o]:+.3f}" if means["auto"] is not None and means[o] is not None else "-"
                for o in ("grid", "bare")]
        used = [r["auto"]["budget_used"] for r in group if r.get("auto")]
        diff.append(f"{min(used):.0f}..{max(used):.0f} s" if used else "-")
        print(f"| {dataset} | {budget:g} | {metric} | " + " | ".join(cells) + " | " + " | ".join(diff) + " |")


if __name__ == "__main__":
    main()
