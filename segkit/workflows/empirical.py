"""The empirical stage of `segkit auto`: choices tried on the validation fold only.

After training, in this order (each tried only while the stage's time lasts):
1. the checkpoint set: the planned ``last:3`` average against ``best`` and ``last:1``;
2. the TTA views: identity alone, + hflip, + vflip, + both (a view is kept only if it helps:
   flips hurt on off-nadir aerial images);
3. post-processing: for mask runs the view weights, threshold and minimum object size of
   segkit.tune.thresholds; for instance runs the watershed's thresholds (segkit.tune.seeds);
4. mask runs: the dense CRF on or off, its bilateral kernel one median object diameter wide (the
   ablation's best width, docs/ablation.md), kept only if it raises the validation Dice.
Every choice needs evidence: with fewer than MIN_OBJECTS objects or MIN_FOREGROUND_PX foreground
pixels in the validation fold, or when every candidate scores within TIE of the planned one, the
rule-based value is kept and the result says why. The validation probabilities are kept in memory
(a validation fold is a few regions; segkit.workflows.run_scores keeps instance ones the same way).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from segkit.data.dataset import SourcePair
from segkit.ground.config import Config, load_config
from segkit.ground.geometry import Window
from segkit.infer.run import infer_settings, load_ensemble, stream_probs
from segkit.io.images.raster import open_raster
from segkit.tune.thresholds import PostSetting, search_postprocess, size_curve
from segkit.tune.seeds import score_seeds, search_seeds
from segkit.runs.checkpoint import run_checkpoints
from segkit.runs.rundir import save_config, update_run_info
from segkit.train.from_config import label_options, split_rows

MIN_OBJECTS = 15
MIN_FOREGROUND_PX = 2000
TIE = 0.002  # score differences below this are noise on a validation fold: the planned value stays
CHECKPOINT_SETS = ("last:3", "best", "last:1")
VIEW_SETS = (("identity",), ("identity", "hflip"), ("identity", "vflip"), ("identity", "hflip", "vflip"))


@dataclass
class Stage:
    """What the empirical stage chose, with its evidence (written to run.json as ``auto``)."""

    epochs: str
    views: tuple
    keys: dict = field(default_factory=dict)  # infer.KEY -> value saved as the run's defaults
    before: float | None = None  # the planned setting's validation score
    after: float | None = None
    metric: str = "dice"
    notes: list = field(default_factory=list)


def validation_truth(config: Config) -> list[tuple[str, Path, Window, np.ndarray]]:
    """(id, image, region, truth) of every labelled validation row: bool masks, or int32 ids for instance runs."""
    _, rows = split_rows(config)
    options = label_options(config)
    out = []
    for row in rows:
        if row.label is None:
            continue
        pair = SourcePair(row, options)
        raster = pair.raster
        region = row.region or Window(0, 0, raster.height, raster.width)
        truth = pair.labels.read_instances(region) if options.instances else pair.labels.read(region) != 0
        out.append((row.id, row.image, region, truth))
    return out


def evidence(items, instances: bool) -> tuple[int, int]:
    """(objects, foreground pixels) of the validation truth."""
    objects = pixels = 0
    for _, _, _, truth in items:
        pixels += int(np.count_nonzero(truth))
        objects += int(np.unique(truth[truth > 0]).size) if instances else int(ndimage.label(truth)[1])
    return objects, pixels


def _predict(ensemble, settings, device, items, views) -> dict:
    """{image id: {view: probs}} of each view alone ((h, w) masks, (T, h, w) targets)."""
    out = {}
    for image_id, image, region, _ in items:
        with open_raster(image) as raster:
            out[image_id] = {}
            for view in views:
                probs = np.concatenate([p.astype(np.float32) for _, p in stream_probs(
                    ensemble, raster, settings, device, region=region, tta=[(view, 1.0)])], axis=-2)
                out[image_id][view] = probs if ensemble.targets else probs.reshape(probs.shape[-2:])
    return out


def _score(probs: dict, items, weights: tuple, run_targets, settings, min_px: int = 0) -> float:
    """Object F1 (instance runs, the planned watershed) or mean Dice at the planned threshold."""
    if run_targets:
        return score_seeds(_seed_loader(probs, items, weights), run_targets, settings.seeds)["object_f1"]
    return float(size_curve(_mask_loader(probs, items), weights, float(settings.threshold), (min_px,))[0])


def _mask_loader(probs: dict, items):
    return lambda: ((image_id, probs[image_id], truth) for image_id, _, _, truth in items)


def _seed_loader(probs: dict, items, weights: tuple):
    def combined(views):
        return sum(views[v] * np.float32(w) for v, w in weights)
    return lambda: ((image_id, combined(probs[image_id]), truth) for image_id, _, _, truth in items)


def _equal(views: tuple) -> tuple:
    return tuple((v, 1.0 / len(views)) for v in views)


def choose(run_dir: Path, device, *, deadline: float, clock=time.time) -> Stage:
    """Run the stage on ``run_dir``'s validation fold, save the chosen infer defaults, return the Stage."""
    config = load_config(run_dir / "config.yaml")
    settings = infer_settings(config)
    targets = _targets(config)
    stage = Stage(epochs=config.infer.epochs, views=("identity",), metric="object_f1" if targets else "dice")
    items = validation_truth(config)
    objects, pixels = evidence(items, bool(targets))
    if objects < MIN_OBJECTS or pixels < MIN_FOREGROUND_PX:
        stage.notes.append(f"validation fold holds {objects} objects and {pixels} foreground pixels (< {MIN_OBJECTS} "
                           f"or < {MIN_FOREGROUND_PX}): too few to tell settings apart; the planned values are kept")
        return stage
    ensemble, probs = _choose_checkpoints(stage, run_dir, device, items, targets, settings, deadline, clock)
    if clock() < deadline:
        _choose_views(stage, ensemble, probs, device, items, targets, settings)
    else:
        stage.notes.append("time: TTA views not tried")
    _post(stage, probs, items, targets, settings)
    if not targets and clock() < deadline:
        _choose_crf(stage, probs, items, config, run_dir)
    _save(run_dir, config, stage)
    return stage


def _choose_checkpoints(stage: Stage, run_dir: Path, device, items, targets, settings, deadline, clock):
    """The planned checkpoint set against the others (identity view); returns the chosen (ensemble, probs)."""
    scores = {}
    for spec in dict.fromkeys((stage.epochs, *CHECKPOINT_SETS)):  # the planned set first, always scored
        if scores and clock() > deadline:
            stage.notes.append(f"time: checkpoint sets after {list(scores)} not tried")
            break
        if _same(run_dir, spec, scores):
            continue
        ensemble = load_ensemble([run_dir], spec, device)
        probs = _predict(ensemble, settings, device, items, ("identity",))
        scores[spec] = (_score(probs, items, (("identity", 1.0),), targets, settings), ensemble, probs)
    planned = stage.epochs
    # the planned setting as it is (its minimum object size too)
    stage.before = _score(scores[planned][2], items, (("identity", 1.0),), targets, settings,
                          int(settings.min_object_px))
    best = max(scores, key=lambda s: scores[s][0])
    if scores[best][0] > scores[planned][0] + TIE:
        stage.epochs = best
    stage.notes.append("checkpoints: " + ", ".join(f"{s} {v[0]:.4f}" for s, v in scores.items()) + f" -> {stage.epochs}")
    return scores[stage.epochs][1:]


def _choose_views(stage: Stage, ensemble, probs: dict, device, items, targets, settings) -> None:
    """Each flip view predicted once; a set of views is kept only if it beats identity alone by TIE."""
    more = _predict(ensemble, settings, device, items, ("hflip", "vflip"))
    for image_id in probs:
        probs[image_id].update(more[image_id])
    view_scores = {views: _score(probs, items, _equal(views), targets, settings) for views in VIEW_SETS}
    base = view_scores[("identity",)]
    best_views = max(view_scores, key=lambda v: (view_scores[v], -len(v)))
    stage.views = best_views if view_scores[best_views] > base + TIE else ("identity",)
    stage.notes.append("views: " + ", ".join(f"{'+'.join(v)} {s:.4f}" for v, s in view_scores.items())
                       + f" -> {'+'.join(stage.views)}")


def _targets(config: Config) -> tuple:
    from segkit.data.targets import parse_targets

    return tuple(parse_targets(config.data.targets) or ())


def _same(run_dir: Path, spec: str, scores: dict) -> bool:
    """True when ``spec`` selects the same checkpoint files as a set already scored."""
    if not scores:
        return False
    files = run_checkpoints(run_dir, spec)
    return any(run_checkpoints(run_dir, other) == files for other in scores)


def _post(stage: Stage, probs, items, targets, settings) -> None:
    """Threshold and minimum size (masks) or the watershed thresholds (instances) on the chosen views: always
    run, on the probabilities already predicted (no further prediction)."""
    weights = _equal(stage.views)
    stage.keys = {"epochs": stage.epochs, "tta": ",".join(f"{v}:{w:.4g}" for v, w in weights)
                  if len(weights) > 1 else "none"}
    if targets:
        loader = _seed_loader(probs, items, weights)
        result = search_seeds(loader, targets, settings.seeds)
        after, scores = result["after"]
        stage.keys.update({"threshold": after.mask, "seed_threshold": after.seed, "seed_border": after.border})
        stage.after = scores["object_f1"]
        stage.notes.append(f"watershed: seed {after.seed}, border {after.border}, mask {after.mask}")
        return
    base = PostSetting(weights, float(settings.threshold), int(settings.min_object_px), bool(settings.fill_holes))
    result = search_postprocess(_mask_loader(probs, items), base)
    after, dice = result["after"]
    if dice <= result["before"][1] + TIE:
        after, dice = base, result["before"][1]
    stage.keys.update({"tta": after.tta_spec() if len(after.weights) > 1 else "none", "threshold": after.threshold,
                       "min_object_px": after.min_px})
    stage.after = dice
    stage.notes.append(f"post-processing: threshold {after.threshold}, min_object_px {after.min_px} "
                       f"(planned {base.threshold}, {base.min_px}: dice {result['before'][1]:.4f})")


def crf_params(run_dir: Path) -> dict:
    """The CRF's parameters at the objects' scale: the bilateral kernel one median object diameter wide
    (from the run's fingerprint.json; pydensecrf's 80 px without one), sxy_gaussian 1, compat_bilateral 5."""
    path = run_dir / "fingerprint.json"
    diameter = None
    if path.is_file():
        diameter = ((json.loads(path.read_text()).get("labels") or {}).get("diameter_px") or {}).get("p50")
    return {"sxy_gaussian": 1, "compat_bilateral": 5, "sxy_bilateral": round(float(diameter or 80), 1)}


def _choose_crf(stage: Stage, probs, items, config: Config, run_dir: Path) -> None:
    """CRF on the chosen views' probabilities of each validation region; kept if Dice rises by more than TIE."""
    from segkit.post.crf import dense_crf
    from segkit.tune.thresholds import combine

    try:
        import pydensecrf  # noqa: F401  (the crf extra)
    except ImportError:
        stage.notes.append("crf: not tried (the crf extra is not installed)")
        return
    params = crf_params(run_dir)
    weights = _equal(stage.views)
    threshold, min_px = float(stage.keys.get("threshold", config.infer.threshold)), int(
        stage.keys.get("min_object_px", config.infer.min_object_px))
    refined = {}
    for image_id, image, region, _ in items:
        with open_raster(image) as raster:
            pixels = raster.read(region)
        refined[image_id] = {"identity": dense_crf(pixels, combine(probs[image_id], weights)[None], **params)[0]}
    fill = bool(config.infer.fill_holes)
    without = float(size_curve(_mask_loader(probs, items), weights, threshold, (min_px,), fill)[0])
    with_crf = float(size_curve(_mask_loader(refined, items), (("identity", 1.0),), threshold, (min_px,), fill)[0])
    chosen = with_crf > without + TIE
    stage.notes.append(f"crf (bilateral {params['sxy_bilateral']:g} px): dice {with_crf:.4f} with, {without:.4f} "
                       f"without -> {'on' if chosen else 'off'}")
    if chosen:
        stage.keys.update({"use_crf": True, "crf": params})
        stage.after = with_crf


def _save(run_dir: Path, config: Config, stage: Stage) -> None:
    """The chosen keys as the run's infer defaults (config.yaml), the evidence in run.json."""
    updated = load_config(None, [f"infer.{k}={json.dumps(v)}" for k, v in stage.keys.items()], base=config)
    save_config(updated, run_dir / "config.yaml")
    update_run_info(run_dir, auto_empirical={"epochs": stage.epochs, "views": list(stage.views), "keys": stage.keys,
                                             "before": stage.before, "after": stage.after, "metric": stage.metric,
                                             "notes": stage.notes, "fold": config.data.val_fold})
