"""Ablation: each technique segkit ships toggled alone against a fixed base recipe, several seeds.

For every dataset (tools/ablate_data.py: the nuclei sample, the generated aerial-like scene, the
digits set) and seed, the base recipe (tools/ablate_arms.py: every technique off) is trained,
then every arm that applies: training arms (copy-paste, progressive, EMA, SWA, instance targets,
channel windows, heavy-noise preset, balanced sampler, label smoothing) retrain with the base's
optimizer steps; post-processing arms (hflip TTA, epoch ensemble, CRF, minimum object size) reuse
the base run of that seed. An arm sets one settings key; the seed (run.seed) changes the windows,
the augmentation and the initial weights. Scores on the validation region (seg: pixel Dice and
object F1@0.5) or the clean test split (digits: macro F1). Each run is printed as one
``seed-score`` line; the summary and the table are computed from those figures alone.

    python tools/bench_ablate.py --out ablate_out                 # the docs' table (about an hour, one CPU)
    python tools/bench_ablate.py --out /tmp/q --quick             # a smoke version on tiny data
    python tools/bench_ablate.py --out ablate_out --render --docs docs/ablation.md   # table from the results

Writes under --out: records.jsonl (one line per run, appended as it goes; a rerun skips what is
there), summary.json, scores.csv, table.md, crf_grid.json; with --preview PATH a picture of
copy-pasted training windows. torch runs on one thread (run it through /work/brief/cpu-run).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import ablate_arms as arms_mod  # noqa: E402
import ablate_data  # noqa: E402
import ablate_score as score  # noqa: E402
import ablate_table as table  # noqa: E402
from segkit.train.fit import fit  # noqa: E402

MARK_START, MARK_END = "<!-- ablation-table:start -->", "<!-- ablation-table:end -->"


def train(stages: list, runs: Path, name: str, log) -> tuple[Path, float, float]:
    """Train the stages in order (a finetune starts from the previous stage's last epoch); (run dir,
    CPU seconds, wall seconds). segkit's own log lines go to ``log``."""
    cpu, wall, parent = time.process_time(), time.perf_counter(), None
    for k, (command, config) in enumerate(stages):
        config = arms_mod.with_values(config, run__name=name if k == 0 else f"{name}_{command}{k}",
                                      run__runs_dir=str(runs))
        with contextlib.redirect_stdout(log):
            parent = fit(config, command=command, parent=parent, parent_epoch="last")
    return parent, time.process_time() - cpu, time.perf_counter() - wall


class Bench:
    """One benchmark run: datasets, seeds, arms, where records go, what is done already."""

    def __init__(self, out: Path, datasets: dict, seeds: list[int], arm_names, budget: str):
        self.out, self.datasets, self.seeds, self.budget = out, datasets, seeds, budget
        self.arm_names = arm_names
        self.runs = out / "runs"
        self.records_path = out / "records.jsonl"
        self.records = read_records(self.records_path)
        self.log = open(out / "segkit.log", "a")
        self.grids: dict = {}

    def done(self, dataset: str, seed: int, arm: str) -> bool:
        return any(r["dataset"] == dataset and r["seed"] == seed and r["arm"] == arm for r in self.records)

    def record(self, rec: dict) -> None:
        rec["scores"] = {k: round(v, 5) for k, v in rec["scores"].items()}
        self.records.append(rec)
        with open(self.records_path, "a") as handle:
            handle.write(json.dumps(rec) + "\n")
        print(seed_line(rec), flush=True)

    def run(self) -> None:
        """Per dataset: the base and the post-processing arms of every seed, then each training arm over every
        seed (arm by arm, so a run stopped early leaves whole arms)."""
        for ds in self.datasets.values():
            arms = arms_mod.arms_for(ds, self.arm_names)
            for seed in self.seeds:
                self.run_seed(ds, seed, [a for a in arms if a.stage == "post"])
            for arm in (a for a in arms if a.stage == "train"):
                for seed in self.seeds:
                    self.run_seed(ds, seed, [arm])

    def run_seed(self, ds, seed: int, arms: list) -> None:
        # why: one seed of one dataset: the base (trained once, then found on disk) and the given arms; the
        # scoring differs by task, the bookkeeping not.
        if all(self.done(ds.name, seed, name) for name in ["base", *(a.name for a in arms)]):
            return  # recorded by an earlier run: its run directories are not needed
        base = arms_mod.base_config(ds, seed, self.runs, self.budget)
        rows = score.held_out_rows(base, ds.extra["test"]) if ds.task == "cls" else None
        items = score.truth_items(base) if ds.task == "seg" else None
        train_rows = _train_rows(base)
        name = f"{ds.name}_s{seed}_base"
        if not _finished(self.runs / name):
            base_dir, cpu, wall = train(arms_mod.stages(base, base, None), self.runs, name, self.log)
        else:
            base_dir, cpu, wall = self.runs / name, *self._cost(ds.name, seed, "base")
        steps = arms_mod.optimizer_steps(base, train_rows)
        cache: dict = {}
        todo = [("base", None, base)] + [(a.name, a, arms_mod.arm_config(base, a, ds)) for a in arms]
        for arm_name, arm, config in todo:
            if self.done(ds.name, seed, arm_name):
                continue
            started = time.process_time()
            if arm is None or arm.stage == "post":
                run_dir, arm_cpu, arm_wall, arm_steps = base_dir, cpu, wall, steps
            else:
                stages = arms_mod.stages(config, base, arm)
                run_dir, arm_cpu, arm_wall = train(stages, self.runs, f"{ds.name}_s{seed}_{arm_name}", self.log)
                arm_steps = sum(arms_mod.optimizer_steps(c, train_rows) for _, c in stages)
                started = time.process_time()
            epochs = "swa" if arm is not None and arm.name == "swa" else config.infer.epochs
            if ds.task == "cls":
                scores = score.cls_scores(run_dir, epochs, rows)
            else:
                key = (str(run_dir), epochs, config.infer.tta)
                if key not in cache:
                    cache[key] = score.predict(run_dir, epochs, config.infer.tta, items)
                probs, targets = cache[key]
                scores = score.seg_scores(probs, items, targets=targets, config=config, crf=config.infer.crf,
                                          min_px=config.infer.min_object_px)
            self.record({"dataset": ds.name, "task": ds.task, "seed": seed, "arm": arm_name,
                         "stage": arm.stage if arm else "train", "key": arm.key if arm else None,
                         "steps": arm_steps, "train_cpu_s": round(arm_cpu, 1), "train_wall_s": round(arm_wall, 1),
                         "score_cpu_s": round(time.process_time() - started, 2), "scores": scores})
            if ds.task == "seg" and arm is None and seed == self.seeds[0]:  # the CRF grid: once, on this model
                self.crf_grid(ds, *cache[(str(run_dir), epochs, config.infer.tta)], items, config)

    def _cost(self, dataset: str, seed: int, arm: str) -> tuple[float, float]:
        for r in self.records:
            if (r["dataset"], r["seed"], r["arm"]) == (dataset, seed, arm):
                return r["train_cpu_s"], r["train_wall_s"]
        return float("nan"), float("nan")

    def crf_grid(self, ds, probs, targets, items, config) -> None:
        if (self.out / f"crf_grid_{ds.name}.json").exists():
            return
        started = time.process_time()
        rows = score.crf_grid(probs, items, config, ds.diameter_px)
        path = self.out / f"crf_grid_{ds.name}.json"
        path.write_text(json.dumps({"dataset": ds.name, "diameter_px": ds.diameter_px, "rows": rows,
                                    "cpu_s": round(time.process_time() - started, 1)}, indent=1))
        best = max(rows, key=lambda r: r["dice"])
        print(f"crf grid {ds.name} (seed {self.seeds[0]} base model, object diameter {ds.diameter_px} px): "
              f"{len(rows) - 1} settings; none: dice {rows[0]['dice']:.4f} F1 {rows[0]['object_f1']:.4f}; best dice "
              f"{best['dice']:.4f} F1 {best['object_f1']:.4f} with {best['crf']}", flush=True)


def _finished(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.exists() and json.loads(info.read_text()).get("status") == "finished"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _train_rows(base) -> int:
    """Training rows of a cls manifest (seg: 0, steps come from windows)."""
    if base.task != "cls":
        return 0
    from segkit.train import from_config as fc

    return len(fc.split_rows(base)[0])


def seed_line(rec: dict) -> str:
    scores = " | ".join(f"{k} {v:.5f}" for k, v in rec["scores"].items())
    return (f"seed-score | {rec['dataset']} | {rec['seed']} | {rec['arm']} | {scores} | steps {rec['steps']} | "
            f"train {rec['train_cpu_s']} CPU-s {rec['train_wall_s']} s | score {rec['score_cpu_s']} CPU-s")


def parse_seed_lines(text: str) -> list[dict]:
    """The records' dataset, seed, arm and scores back from printed ``seed-score`` lines."""
    out = []
    for line in text.splitlines():
        if not line.startswith("seed-score | "):
            continue
        parts = [p.strip() for p in line.split("|")]
        scores = {}
        for part in parts[4:]:
            key, _, value = part.partition(" ")
            if key in ("steps", "train", "score"):
                break
            scores[key] = float(value)
        out.append({"dataset": parts[1], "seed": int(parts[2]), "arm": parts[3], "scores": scores})
    return out


def write_outputs(out: Path, records: list[dict], datasets: dict, seconds: dict | None) -> str:
    """summary.json, scores.csv and table.md from the records; returns the table's markdown."""
    tasks = {name: task for name, task in datasets.items() if any(r["dataset"] == name for r in records)}
    summary = table.summarise(records, tasks)
    what = {a.name: a.key for a in arms_mod.ARMS}
    text = table.render(summary, records, tasks, arms_mod.ARM_NAMES, what)
    trained = [r for r in records if r["stage"] == "train"]  # the base and the training arms: one run each
    text += (f"\nTotal over the records: {len(trained)} training runs, {sum(r['train_wall_s'] for r in trained):.0f} s "
             f"wall and {sum(r['train_cpu_s'] for r in trained):.0f} CPU-s of training, "
             f"{sum(r['score_cpu_s'] for r in records):.0f} CPU-s of scoring ({len(records)} scored runs; "
             "one thread).\n")
    if seconds:
        text += f"The last invocation: {seconds['wall']:.0f} s wall, {seconds['cpu']:.0f} CPU-s.\n"
    for name in tasks:
        grid_path = out / f"crf_grid_{name}.json"
        if grid_path.exists():
            text += "\n" + table.render_crf_grid(json.loads(grid_path.read_text()))
    (out / "summary.json").write_text(json.dumps({"rows": summary, "seconds": seconds}, indent=1, default=str))
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "seed", "arm", "metric", "score", "steps", "train_cpu_s", "score_cpu_s"])
        for r in records:
            for metric, value in r["scores"].items():
                writer.writerow([r["dataset"], r["seed"], r["arm"], metric, value, r["steps"], r["train_cpu_s"],
                                 r["score_cpu_s"]])
    (out / "table.md").write_text(text)
    return text


def update_docs(path: Path, text: str) -> None:
    """Replace what lies between the ablation-table markers of a docs page."""
    page = path.read_text()
    head, _, rest = page.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    if not rest:
        raise SystemExit(f"{path}: no {MARK_START} marker")
    path.write_text(f"{head}{MARK_START}\n{text}{MARK_END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ablate_out"), help="output folder (records, runs, table)")
    parser.add_argument("--datasets", default="nuclei,scene,digits")
    parser.add_argument("--seeds", default=None, help="run.seed values (default 0,1,2; --quick 0,1)")
    parser.add_argument("--arms", default=None, help=f"only these arms; known: {','.join(arms_mod.ARM_NAMES)}")
    parser.add_argument("--quick", action="store_true", help="tiny data and budget: a smoke version")
    parser.add_argument("--render", action="store_true", help="only rebuild the summary and table from records.jsonl")
    parser.add_argument("--docs", type=Path, default=None, help="a docs page whose table markers get the table")
    parser.add_argument("--preview", default=None,
                        help="write a copy-paste preview PNG of each seg dataset to this path ({name}: the dataset)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.datasets.split(",") if n]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    wall, cpu = time.perf_counter(), time.process_time()
    if not args.render or args.preview:  # --render alone needs only the records
        datasets = ablate_data.prepare(names, args.out / "data", quick=args.quick)
    if args.preview:
        import ablate_preview

        for ds in datasets.values():
            if ds.task == "seg":
                print(ablate_preview.write(ds, args.out, Path(args.preview.format(name=ds.name))), flush=True)
    if not args.render:
        bench = Bench(args.out, datasets, seeds, [a for a in (args.arms or "").split(",") if a] or None,
                      "quick" if args.quick else "full")
        print(f"ablation: datasets {names}, seeds {seeds}, budget {bench.budget}, torch threads {args.threads}, "
              f"load {os.getloadavg()[0]:.2f}; segkit log {args.out / 'segkit.log'}", flush=True)
        bench.run()
        seconds = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        (args.out / "seconds.json").write_text(json.dumps(seconds))
    seconds_path = args.out / "seconds.json"
    text = write_outputs(args.out, read_records(args.out / "records.jsonl"), {n: ablate_data.TASKS[n] for n in names},
                         json.loads(seconds_path.read_text()) if seconds_path.exists() else None)
    print("\n" + text)
    if args.docs:
        update_docs(args.docs, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
