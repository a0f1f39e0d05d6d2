"""Label less: a simulated annotation loop, regions picked at random against `segkit suggest`.

The full labels stand in for the annotator. Per dataset and seed, a few random regions of the
training area start labelled (manifest rows with a region each, sparse labels); every round adds
``--add`` regions chosen (a) at random on the same candidate grid or (b) by suggest's ranking
(segkit.workflows.suggest.suggest_regions: entropy + disagreement of hflip TTA x the last two
checkpoints, picks apart from the labelled ones), then a fresh model is trained with the same
budget and scored on the held-out validation rows (val Dice of the last epoch). The random arm
runs ``--seeds``, the suggest arm ``--suggest-seeds`` of them (same starting regions per seed).

Pseudo-labels: at the smallest budget (round 0) each seed's model writes pseudo-labels over the
training area (segkit.workflows.pseudo, low 0.1 / high 0.9, ignore between), added as one row
next to the true regions, weighted so that it gets ``--pseudo-share`` of the windows (a row's
draws go with area x weight), and a fresh model is trained with the same budget again.

Datasets: the bundled nuclei sample (512 x 512, rows 384-511 validate; regions 64 px, windows
64 px) and a generated aerial-like scene (tools/make_scene.py at 1024 px, the bottom quarter
validates; regions 96 px, windows 96 px seen at 64). Everything runs in this process (CLI
commands through click, no subprocess), so CPU seconds are this process's.

    python tools/bench_suggest.py --out /tmp/bench_suggest            # both datasets
    python tools/bench_suggest.py --datasets nuclei --seeds 0,1 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


@dataclass(frozen=True)
class Dataset:
    name: str
    image: Path
    mask: Path
    height: int
    width: int
    train_rows: int  # rows [0, train_rows) are the pool of regions; the rest validates
    region_px: int
    fov_px: int
    size: int
    start: int  # regions labelled before the first round
    add: int  # regions added per round


def make_datasets(work: Path, names: list[str]) -> list[Dataset]:
    import cv2
    import tifffile

    out = []
    if "nuclei" in names:
        sample = ROOT / "segkit" / "sample"
        out.append(Dataset("nuclei", sample / "nuclei.tif", sample / "nuclei_mask.png", 512, 512, 384, 64, 64, 64,
                           2, 2))
    if "scene" in names:
        from make_scene import make_scene

        image, mask = make_scene(seed=7, size=1024)
        tifffile.imwrite(work / "scene.tif", image, photometric="rgb")
        cv2.imwrite(str(work / "scene_mask.png"), mask)
        out.append(Dataset("scene", work / "scene.tif", work / "scene_mask.png", 1024, 1024, 768, 96, 96, 64, 3, 3))
    return out


def write_manifest(path: Path, data: Dataset, regions: list, extra: list[str] = ()) -> None:
    lines = ["id,image,label,region,fold,weight"]
    for k, (r, c) in enumerate(regions):
        lines.append(f'r{k},{data.image},{data.mask},"{r},{c},{data.region_px},{data.region_px}",1,')
    lines.append(f'val,{data.image},{data.mask},"{data.train_rows},0,{data.height - data.train_rows},{data.width}",0,')
    path.write_text("\n".join([*lines, *extra]) + "\n")


def train(data: Dataset, manifest: Path, runs: Path, name: str, seed: int, args) -> float:
    """One fresh run with the fixed budget; the last epoch's validation Dice."""
    from segkit.cli import cli

    command = ["train", "--name", name, "--runs-dir", str(runs), "--size", str(data.size), "--fov", str(data.fov_px),
               "--epochs", str(args.epochs), "--set", f"data.manifest={manifest}", "--set", f"run.seed={seed}",
               "--set", f"train.windows_per_epoch={args.windows}", "--set", "train.batch_size=8",
               "--set", "run.progress=false", "--set", "data.stats_windows=16", "--set", "data.val_fold=0",
               "--set", "infer.epochs=last:2", "--set", "train.keep_last=2", "--set", "infer.tta=hflip", "--set", "infer.overlap_px=16",
               "--set", f"model.encoder={args.encoder}"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(args=command, standalone_mode=False)
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines() if line]
    return float(records[-1]["val_dice"])


def drop_checkpoints(run_dir: Path) -> None:
    """A run's checkpoints (model and optimizer state, about 170 MB each for a resnet18 Unet) once no
    later step needs them: the loop trains dozens of runs."""
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.unlink()


def grid_candidates(data: Dataset, scores=None):
    """Candidate windows on suggest's grid (a quarter region step) inside the training rows."""
    from segkit.workflows.picks import candidates

    cell = data.region_px // 4
    shape = (-(-data.train_rows // cell), -(-data.width // cell))
    values = np.zeros(shape) if scores is None else scores
    return candidates(values, np.ones(shape), image=0, cell_px=cell, region_px=data.region_px,
                      height=data.train_rows, width=data.width, min_usable=1.0)


def random_regions(data: Dataset, taken: list, count: int, rng) -> list:
    from segkit.ground.geometry import Window
    from segkit.workflows.picks import Candidate, pick_apart

    pool = [Candidate(0, c.window, float(rng.random()), 1.0) for c in grid_candidates(data)]
    windows = [Window(r, c, data.region_px, data.region_px) for r, c in taken]
    return [(p.window.row, p.window.col) for p in pick_apart(pool, count, {0: windows})]


def suggested_regions(data: Dataset, run_dir: Path, taken: list, count: int) -> list:
    import torch

    from segkit.ground.config import load_config
    from segkit.ground.geometry import Window
    from segkit.infer.run import infer_settings, load_ensemble
    from segkit.workflows.suggest import SuggestOptions, suggest_regions

    config = load_config(run_dir / "config.yaml")
    device = torch.device("cpu")
    ensemble = load_ensemble([run_dir], config.infer.epochs, device)
    options = SuggestOptions(count, data.region_px, "both", False, 1, 0.5, "", None, "pixel")
    windows = [Window(r, c, data.region_px, data.region_px) for r, c in taken]
    windows.append(Window(data.train_rows, 0, data.height - data.train_rows, data.width))  # validation rows
    picks = suggest_regions(ensemble, [("img", data.image)], {0: windows}, options,
                            infer_settings(config), device)
    return [(p.window.row, p.window.col) for p in picks]


def pseudo_rows(data: Dataset, run_dir: Path, out: Path, labelled_px: int, share: float) -> list[str]:
    """One row of pseudo-labels over the training rows, weighted so that it gets ``share`` of the
    windows (a row's draws go with area x weight, and the pseudo row is far larger than the regions)."""
    import torch

    from segkit.ground.config import load_config
    from segkit.infer.run import infer_settings, load_ensemble
    from segkit.workflows.pseudo import PseudoOptions, pseudo_image

    config = load_config(run_dir / "config.yaml")
    ensemble = load_ensemble([run_dir], config.infer.epochs, torch.device("cpu"))
    weight = share / (1 - share) * labelled_px / (data.train_rows * data.width)
    tif, _ = pseudo_image(ensemble, "img", data.image, out, PseudoOptions(0.1, 0.9, weight), infer_settings(config),
                          torch.device("cpu"), overwrite=True)
    return [f'pseudo,{data.image},{tif},"0,0,{data.train_rows},{data.width}",1,{weight:.6g}']


def pseudo_pair(data: Dataset, work: Path, runs: Path, seed: int, start: list, without: float, args) -> dict:
    """Round 0 again with the round-0 model's pseudo-labels added: val Dice without and with."""
    manifest = work / data.name / f"pseudo-s{seed}.csv"
    rows = pseudo_rows(data, runs / f"random-s{seed}-r0", work / data.name / f"pseudo-s{seed}",
                       len(start) * data.region_px ** 2, args.pseudo_share)
    write_manifest(manifest, data, start, rows)
    with_pseudo = train(data, manifest, runs, f"pseudo-s{seed}-{args.pseudo_share:g}", seed, args)
    drop_checkpoints(runs / f"pseudo-s{seed}-{args.pseudo_share:g}")
    log(f"{data.name} seed {seed} pseudo-labels at {data.start} regions ({args.pseudo_share:.0%} of the draws): "
        f"val Dice {without:.4f} without, {with_pseudo:.4f} with")
    return {"without": without, "with": with_pseudo}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_dataset(data: Dataset, work: Path, args) -> dict:
    # why: one dataset's whole loop (both arms, every seed, the pseudo-label pair) shares the starting regions
    # and the run folders; split up, each part would take the same eight values.
    seeds = [int(s) for s in args.seeds.split(",")]
    suggest_seeds = seeds[: args.suggest_seeds]
    runs = work / data.name / "runs"
    result = {"random": {}, "suggest": {}, "pseudo": {}, "areas": []}
    area = data.region_px ** 2
    for seed in seeds:
        rng = np.random.default_rng(seed)
        start = random_regions(data, [], data.start, rng)
        if args.pseudo_only:  # the round-0 runs of an earlier invocation with the same --out
            records = (runs / f"random-s{seed}-r0" / "metrics.jsonl").read_text().splitlines()
            without = float(json.loads(records[-1])["val_dice"])
            result["pseudo"][seed] = pseudo_pair(data, work, runs, seed, start, without, args)
            drop_checkpoints(runs / f"random-s{seed}-r0")
            continue
        arms = {"random": list(start)}
        if seed in suggest_seeds:
            arms["suggest"] = list(start)
        scores = {arm: [] for arm in arms}
        for round_ in range(args.rounds + 1):
            for arm, regions in arms.items():
                if round_ == 0 and arm == "suggest":  # the same regions as the random arm's round 0
                    scores[arm].append(scores["random"][0])
                    continue
                manifest = work / data.name / f"{arm}-s{seed}-r{round_}.csv"
                write_manifest(manifest, data, regions)
                name = f"{arm}-s{seed}-r{round_}"
                scores[arm].append(train(data, manifest, runs, name, seed, args))
                if arm == "random" and round_ > 0 or round_ == args.rounds:
                    drop_checkpoints(runs / name)  # the random arm's later models are never used again
                log(f"{data.name} seed {seed} {arm:7s} round {round_}: {len(regions)} regions "
                    f"({len(regions) * area} px^2) val Dice {scores[arm][-1]:.4f}")
            if round_ == args.rounds:
                break
            for arm in arms:
                run_dir = runs / f"{'random' if round_ == 0 else arm}-s{seed}-r{round_}"
                new = (random_regions(data, arms[arm], data.add, rng) if arm == "random"
                       else suggested_regions(data, run_dir, arms[arm], data.add))
                arms[arm] += new
                if arm == "suggest" and round_ > 0:
                    drop_checkpoints(run_dir)
        for arm in arms:
            result[arm][seed] = scores[arm]
        result["pseudo"][seed] = pseudo_pair(data, work, runs, seed, start, scores["random"][0], args)
        drop_checkpoints(runs / f"random-s{seed}-r0")
    result["areas"] = [(data.start + k * data.add) * area for k in range(args.rounds + 1)]
    return result


def log(text: str) -> None:
    print(text, flush=True)


def mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} +- {sd:.4f}"


def goal(result: dict) -> tuple[float, float | None]:
    """(random arm's final mean Dice over the seeds suggest ran too, suggest's labelled area reaching
    it as a share of random's final area; None when it never does). Round 0 (the same regions in
    both arms) counts, so a share at round 0 means labels did not move the score at all."""
    final = statistics.fmean(result["random"][seed][-1] for seed in result["suggest"])
    curve = np.mean([s for s in result["suggest"].values()], axis=0)
    for k, value in enumerate(curve):
        if value >= final:
            return final, result["areas"][k] / result["areas"][-1]
    return final, None


def report(name: str, result: dict) -> list[str]:
    pseudo = (f"pseudo-labels at the smallest budget: without {mean_sd(p['without'] for p in result['pseudo'].values())}"
              f", with {mean_sd(p['with'] for p in result['pseudo'].values())}")
    if not result["random"]:
        return [f"## {name}", pseudo]
    lines = [f"## {name}", "| labelled area (px^2) | random (mean +- sd, "
             f"{len(result['random'])} seeds) | suggest ({len(result['suggest'])} seed(s)) |", "|---|---|---|"]
    for k, area in enumerate(result["areas"]):
        lines.append(f"| {area} | {mean_sd(s[k] for s in result['random'].values())} | "
                     f"{mean_sd(s[k] for s in result['suggest'].values())} |")
    final, share = goal(result)
    lines.append(f"random arm's final mean on the suggest seeds: {final:.4f}; suggest reaches it with "
                 + (f"{share:.0%} of that area" if share is not None else "none of the budgets tried")
                 + (" (its start, shared with random)" if share == result["areas"][0] / result["areas"][-1] else ""))
    lines.append(pseudo)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--datasets", default="nuclei,scene")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random arm")
    parser.add_argument("--suggest-seeds", type=int, default=2, help="how many of those seeds the suggest arm runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--windows", type=int, default=48, help="windows per epoch")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--pseudo-share", type=float, default=0.5,
                        help="share of the training windows drawn from the pseudo-labelled row")
    parser.add_argument("--pseudo-only", action="store_true",
                        help="only the pseudo-label pair, reusing the round-0 runs of an earlier run in --out")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_suggest_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SEGKIT_CACHE_DIR", str(work / "cache"))
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else []
    log(f"bench_suggest: {args}; threads {os.environ.get('OMP_NUM_THREADS', '?')}; load {' '.join(load)}")
    started, cpu0 = time.perf_counter(), cpu_seconds()
    results, lines = {}, []
    for data in make_datasets(work, args.datasets.split(",")):
        (work / data.name).mkdir(exist_ok=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        results[data.name] = run_dataset(data, work, args)
        lines += report(data.name, results[data.name])
        lines.append(f"{data.name}: {time.perf_counter() - t0:.0f} s wall, {cpu_seconds() - c0:.0f} CPU-s")
        log("\n".join(lines))  # each dataset's table as soon as it is done
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    lines.append(f"total: {time.perf_counter() - started:.0f} s wall, {cpu_seconds() - cpu0:.0f} CPU-s")
    print(lines[-1])


if __name__ == "__main__":
    main()
