"""Summary and docs table of tools/bench_ablate.py, computed from the per-seed records alone.

A record is one (dataset, seed, arm) with its scores (rounded as printed), optimizer steps and
CPU seconds. Differences are paired by seed: d_s = arm_s - base_s; a cell shows mean(d) +- sd(d)
(sample standard deviation over the seeds) and is marked within noise when the 95 % paired t
interval, mean(d) +- t(0.975, n-1) sd(d) / sqrt(n), holds 0.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

METRICS = {"seg": (("dice", "Dice"), ("object_f1", "object F1@0.5")), "cls": (("macro_f1", "macro F1"),)}
NOISE = "≈"


def paired(base: dict, arm: dict) -> dict:
    """{seed: score} of the base and of an arm -> the paired differences' n, mean, sd, t half-width, noise."""
    seeds = sorted(set(base) & set(arm))
    diffs = [arm[s] - base[s] for s in seeds]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    noise = not (n > 1 and abs(mean) > half)
    return {"n": n, "diff_mean": mean, "diff_sd": sd, "half95": half, "within_noise": noise, "diffs": diffs}


def summarise(records: list[dict], datasets: dict) -> list[dict]:
    """One row per (dataset, metric, arm): per-seed scores of base and arm, their means and spreads, the
    paired difference. ``datasets``: name -> task."""
    out = []
    for name, task in datasets.items():
        mine = [r for r in records if r["dataset"] == name]
        arms = list(dict.fromkeys(r["arm"] for r in mine))
        for metric, _ in METRICS[task]:
            base = {r["seed"]: r["scores"][metric] for r in mine if r["arm"] == "base"}
            for arm in arms:
                scores = {r["seed"]: r["scores"][metric] for r in mine if r["arm"] == arm}
                values = list(scores.values())
                sd = statistics.stdev(values) if len(values) > 1 else math.nan
                row = {"dataset": name, "metric": metric, "arm": arm, "scores": scores,
                       "mean": statistics.fmean(values), "sd": sd}
                if arm != "base":
                    row.update(paired(base, scores))
                out.append(row)
    return out


def cell(row: dict | None) -> str:
    if row is None:
        return "–"
    text = f"{row['diff_mean']:+.3f} ± {row['diff_sd']:.3f}"
    return f"{NOISE} {text}" if row["within_noise"] else f"**{text}**"


def columns(datasets: dict) -> list[tuple[str, str, str]]:
    return [(name, metric, label) for name, task in datasets.items() for metric, label in METRICS[task]]


def verdicts(summary: list[dict]) -> dict:
    """arm -> {"helped": [(dataset, metric)], "hurt": [...]} from the cells outside noise."""
    out: dict = {}
    for row in summary:
        if row["arm"] == "base":
            continue
        entry = out.setdefault(row["arm"], {"helped": [], "hurt": []})
        if not row["within_noise"]:
            entry["helped" if row["diff_mean"] > 0 else "hurt"].append(f"{row['dataset']} {row['metric']}")
    return out


def render(summary: list[dict], records: list[dict], datasets: dict, arm_order: list[str], what: dict) -> str:
    """The markdown of the docs page's results: the difference table, base scores, cost per arm, verdicts."""
    cols = columns(datasets)
    index = {(r["dataset"], r["metric"], r["arm"]): r for r in summary}
    lines = ["| technique (key) | " + " | ".join(f"{d} {label}" for d, _, label in cols) + " |",
             "|---|" + "---|" * len(cols)]
    base_cells = [index.get((d, m, "base")) for d, m, _ in cols]
    lines.append("| base (score, mean ± sd) | " + " | ".join(
        f"{r['mean']:.3f} ± {r['sd']:.3f}" if r else "–" for r in base_cells) + " |")
    arms = [a for a in arm_order if any((d, m, a) in index for d, m, _ in cols)]
    for arm in arms:
        lines.append(f"| {arm} ({what[arm]}) | " + " | ".join(cell(index.get((d, m, arm))) for d, m, _ in cols) + " |")
    lines += ["", "Cost per run, mean over seeds: optimizer steps, training CPU seconds (post-processing arms: the "
              "base's training, not repeated) and scoring CPU seconds.", "",
              "| technique | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for arm in ["base", *arms]:
        cells = []
        for name in datasets:
            mine = [r for r in records if r["dataset"] == name and r["arm"] == arm]
            if not mine:
                cells.append("–")
                continue
            cells.append(f"{round(statistics.fmean(r['steps'] for r in mine))} steps, "
                         f"{statistics.fmean(r['train_cpu_s'] for r in mine):.0f} + "
                         f"{statistics.fmean(r['score_cpu_s'] for r in mine):.1f} CPU-s")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    judged = verdicts(summary)
    nowhere = [a for a in arms if not judged.get(a, {}).get("helped")]
    hurt = [f"{a} ({', '.join(judged[a]['hurt'])})" for a in arms if judged.get(a, {}).get("hurt")]
    helped = [f"{a} ({', '.join(judged[a]['helped'])})" for a in arms if judged.get(a, {}).get("helped")]
    lines += ["", f"Helped nowhere (no cell outside noise above 0): {', '.join(nowhere) or 'none'}.",
              f"Helped somewhere: {', '.join(helped) or 'none'}.",
              f"Hurt somewhere (outside noise, below 0): {', '.join(hurt) or 'none'}."]
    return "\n".join(lines) + "\n"


def render_crf_grid(grid: dict) -> str:
    """One dataset's CRF grid as markdown: rows bilateral width x colour scale, columns bilateral weight."""
    rows = grid["rows"]
    none = rows[0]
    lines = [f"**{grid['dataset']}** (object diameter {grid['diameter_px']} px; no CRF: Dice {none['dice']:.3f}, "
             f"object F1 {none['object_f1']:.3f}; cells Dice / object F1)", "",
             "| sxy_bilateral px | srgb | compat_bilateral 3 | compat_bilateral 10 |", "|---|---|---|---|"]
    cells: dict = {}
    for row in rows[1:]:
        p = row["crf"]
        cells[(p["sxy_bilateral"], p["srgb"], p["compat_bilateral"])] = f"{row['dice']:.3f} / {row['object_f1']:.3f}"
    for sxy, srgb in dict.fromkeys((k[0], k[1]) for k in cells):
        lines.append(f"| {sxy:g} | {srgb} | {cells.get((sxy, srgb, 3), '–')} | {cells.get((sxy, srgb, 10), '–')} |")
    return "\n".join(lines) + "\n"
