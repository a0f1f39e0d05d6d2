"""The `segkit evaluate` entry: the one place of the study layer that unpacks a Config.

What is scored is a run (`--run`: its validation fold predicted as `infer` would) or prediction
files (`--pred`); `--vs` names another run or prediction to compare with. Images and truth come
from the run's fold, or from `--images`/the manifest and `--truth`/the manifest's labels.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from segkit.data.split import load_rows
from segkit.ground.config import Config
from segkit.ground.errors import SegkitError
from segkit.io.atomic import AtomicFile, write_text
from segkit.report.evaluate import DEFAULT_TILE_PX, Evaluation, compare, evaluate_images
from segkit.report.files import LabelReading, evaluate_files, pred_opener, pred_spec, truth_opener, truth_spec
from segkit.report.html import render_seg_report
from segkit.report.overlay import Pictures
from segkit.report.sources import EvalImage, images_from_paths, images_from_rows
from segkit.runs.rundir import RUN_FILE, resolve_run
from segkit.train.from_config import label_options


@dataclass
class EvaluateRequest:
    config: Config  # label decoding, manifest and classes for file predictions
    run: Optional[str] = None
    pred: Optional[str] = None
    truth: Optional[str] = None
    images: tuple = ()
    vs: Optional[str] = None
    out: Optional[str] = None
    overwrite: bool = False
    worst: int = 12
    tile_px: int = DEFAULT_TILE_PX
    objects: bool = True
    search: bool = False
    device: str = "auto"
    runs_dir: Optional[Path] = None  # where run names are looked up (default: config.run.runs_dir)
    overrides: tuple = ()  # the --set texts; with --run they are applied to the run's config (run_settings)


def run_settings(own: Config, merged: Config, task: Optional[str] = None, run_dir: Optional[Path] = None) -> Config:
    """What `evaluate --run` scores: the run's own config (``own``) with the infer settings of ``merged``
    (``own`` <- --config <- --set): its infer and run sections and train.amp, as `segkit infer` reads
    them; data and model stay the run's. ``task`` (--task) is checked against the run's task."""
    if task is not None and task != own.task:
        raise SegkitError(f"{run_dir}: is a {own.task} run; evaluate --task {task} scores a {task} run "
                          "or prediction files")
    return dataclasses.replace(own, infer=merged.infer, run=merged.run,
                               train=dataclasses.replace(own.train, amp=merged.train.amp))


def _is_run(spec: str, runs_dir: Path) -> bool:
    return any((p / RUN_FILE).exists() for p in (Path(spec), runs_dir / spec))


def _reading(config: Config) -> LabelReading:
    return LabelReading(label_options(config), config.infer.rle_order)


class _Subject:
    """One prediction to score: a run (predicted on the fly) or files."""

    def __init__(self, spec: str, runs_dir: Path, reading: LabelReading, stack: ExitStack, device,
                 config: Optional[Config] = None, changed: tuple = ()):
        """``config``: the run's settings to predict with (its own config.yaml when None); ``changed``:
        the --set texts behind them, shown in the label so a run scored two ways is told apart."""
        self.spec, self.run_dir, self.predictions, self.files = spec, None, None, None
        if config is not None or _is_run(spec, runs_dir):
            self.run_dir = resolve_run(spec, runs_dir)
            self.label = f"run {self.run_dir.name}" + (f" ({', '.join(changed)})" if changed else "")
            self._stack, self._device, self._config = stack, device, config
        else:
            self.files = pred_spec(spec, reading)
            self.label = str(spec)

    def prepare(self, images: list[EvalImage]) -> None:
        if self.run_dir is not None and self.predictions is None:
            from segkit.report.runeval import RunPredictions
            from segkit.runs.device import pick_device

            workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="segkit-evaluate-")))
            self.predictions = RunPredictions(self.run_dir, images, pick_device(self._device), workdir,
                                              config=self._config)
            self.predictions.predict_masks()

    def opener(self):
        return self.predictions.pred_for if self.predictions is not None else pred_opener(self.files)


def _images(request: EvaluateRequest, subject: _Subject) -> tuple[list[EvalImage], Config]:
    """The images to score and the config whose labels and classes apply."""
    if request.images:
        return images_from_paths(list(request.images)), request.config
    if subject.run_dir is not None and request.pred is None:
        from segkit.report.runeval import validation_images

        return validation_images(request.config, subject.run_dir), request.config
    return images_from_rows(load_rows(request.config.data.manifest)), request.config


def evaluate(request: EvaluateRequest, echo: Callable[[str], None] = print) -> dict:
    """Score, compare, write report.html (+ .json) and, with --search, tune and save post-processing."""
    if (request.run is None) == (request.pred is None):
        raise SegkitError("evaluate: give either --run RUN or --pred FILE (a Kaggle CSV, a mask folder, GeoJSON)")
    if request.search and request.run is None:
        raise SegkitError("evaluate --search: needs --run RUN (it searches on the run's validation predictions)")
    runs_dir = Path(request.runs_dir or request.config.run.runs_dir)
    if request.config.task == "cls":  # with --run, request.config is the run's own (run_settings)
        return evaluate_classes_command(request, echo)
    reading = _reading(request.config)
    with ExitStack() as stack:
        if request.run is not None:
            changed = tuple(text for text in request.overrides if text.startswith(("infer.", "train.amp")))
            subject = _Subject(request.run, runs_dir, reading, stack, request.device, request.config, changed)
        else:
            subject = _Subject(request.pred, runs_dir, reading, stack, request.device)
        images, config = _images(request, subject)
        reading = _reading(config)
        truth = truth_spec(request.truth, reading)
        out = Path(request.out) if request.out else (subject.run_dir / "report.html" if subject.run_dir else Path("report.html"))
        guard = AtomicFile(out, overwrite=request.overwrite or request.out is None)  # refuse before slow work
        stack.callback(guard.discard)
        other = _Subject(request.vs, runs_dir, reading, stack, request.device) if request.vs else None
        # instance targets: the objects' union is scored as one class, objects by their ids, plus DSB
        instances = bool(config.data.targets)
        classes = 1 if instances else config.model.classes
        truth_for = truth_opener(truth, reading, instances=instances)
        evaluations = []
        for current in filter(None, (subject, other)):
            current.prepare(images)
            if current.predictions is not None:
                echo(f"{current.label}: {current.predictions.describe()}")
            if current.files is not None:
                evaluations.append(evaluate_files(images, current.files, truth, reading, classes=classes,
                                                  tile_px=request.tile_px, objects=request.objects, label=current.label,
                                                  instances=instances))
            else:
                evaluations.append(evaluate_images(images, truth_for, current.opener(), classes=classes,
                                                   tile_px=request.tile_px, objects=request.objects,
                                                   label=current.label, instances=instances))
        evaluation: Evaluation = evaluations[0]
        if not evaluation.items:
            raise SegkitError("evaluate: none of the images has labels; nothing to score")
        comparison = compare(evaluation, evaluations[1]) if other is not None else None
        preds = {s.label: s.opener() for s in filter(None, (subject, other))}
        pictures = Pictures({i.id: i for i in images}, truth_for, preds)
        text = render_seg_report(evaluation, pictures, worst=request.worst, comparison=comparison)
        result = {"evaluation": evaluation.to_dict()}
        if comparison is not None:
            result["vs"] = {"label": comparison.old.label, **comparison.summary(), "images": comparison.images,
                            "only_new": comparison.only_new, "only_old": comparison.only_old}
        _echo_summary(evaluation, comparison, echo)
        if request.search and instances:
            result["search"] = _search_seeds(subject, truth_for, echo, request.config)
        elif request.search:
            from segkit.report.runeval import run_search, save_infer_defaults

            found = run_search(subject.predictions, truth_opener(truth, reading), request.tile_px)
            (before, dice_before), (after, dice_after) = found["before"], found["after"]
            echo(f"search: dice {dice_before:.4f} -> {dice_after:.4f} ({dice_after - dice_before:+.4f}) with tta "
                 f"{after.tta_spec()}, threshold {after.threshold}, min_object_px {after.min_px} "
                 f"(was tta {before.tta_spec()}, threshold {before.threshold}, min_object_px {before.min_px}; "
                 f"{found['cpu_seconds']} CPU s)")
            path = save_infer_defaults(subject.run_dir, found, request.config)
            echo(f"saved as the run's infer defaults in {path}")
            result["search"] = {"before": dice_before, "after": dice_after, "tta": after.tta_spec(),
                                "threshold": after.threshold, "min_object_px": after.min_px}
        guard.tmp.write_text(text, encoding="utf-8")
        guard.commit()
        write_text(out.with_suffix(".json"), json.dumps(result, indent=1, default=str) + "\n")
        echo(f"wrote {out}")
    return result


def _search_seeds(subject: _Subject, truth_for, echo, config: Config) -> dict:
    """--search on an instance run: the watershed's thresholds (segkit.report.seedsearch)."""
    from segkit.report.runeval import run_seed_search, save_seed_defaults

    found = run_seed_search(subject.predictions, truth_for)
    (before, old), (after, new) = found["before"], found["after"]
    scores = ", ".join(f"{k} {old[k]:.4f} -> {new[k]:.4f}" for k in ("object_f1", "dsb", "dice"))
    echo(f"search: {scores} with seed_threshold {after.seed}, seed_border {after.border}, threshold {after.mask} "
         f"(was {before.seed}, {before.border}, {before.mask}; {found['cpu_seconds']} CPU s)")
    echo(f"saved as the run's infer defaults in {save_seed_defaults(subject.run_dir, found, config)}")
    return {"before": old, "after": new, "seed_threshold": after.seed, "seed_border": after.border,
            "threshold": after.mask}


def _echo_summary(evaluation: Evaluation, comparison, echo) -> None:
    s = evaluation.summary()
    line = "  ".join(f"{k} {s[k]:.4f}" for k in ("dice", "iou", "precision", "recall", "object_f1", "dsb") if k in s)
    echo(f"{evaluation.label}: {s['images']} image(s), {s['items']} item(s): {line}")
    for note in evaluation.notes:
        echo(f"note: {note}")
    if comparison is not None:
        c = comparison.summary()
        echo(f"vs {comparison.old.label}: {c['common']} common image(s), {c['better']} better, {c['worse']} worse; "
             f"mean dice {c['new_mean']:.4f} ({evaluation.label}) vs {c['old_mean']:.4f} ({comparison.old.label})")
        if comparison.only_new or comparison.only_old:
            echo(f"note: not compared: {len(comparison.only_new)} image(s) only here "
                 f"({', '.join(comparison.only_new[:5])}), {len(comparison.only_old)} only in {comparison.old.label} "
                 f"({', '.join(comparison.only_old[:5])})")


def evaluate_classes_command(request: EvaluateRequest, echo: Callable[[str], None] = print) -> dict:
    """--task cls: a class CSV scored against a truth CSV or the manifest's class column."""
    from segkit.report.cls_report import evaluate_classes, read_class_csv, render_cls_report

    if request.vs or request.search:
        raise SegkitError("evaluate --task cls: --vs and --search score segmentation runs; give --run CLS_RUN or "
                          "--pred FILE.csv (id,label[,probabilities])")
    config = request.config
    run_dir = resolve_run(request.run, Path(config.run.runs_dir)) if request.run else None
    out = Path(request.out) if request.out else (run_dir / "report.html" if run_dir else Path("report.html"))
    guard = AtomicFile(out, overwrite=request.overwrite or request.out is None)  # refuse before slow work
    try:
        if run_dir is not None:  # the run's validation rows, predicted with its own infer settings
            from segkit.report.cls_run import predict_validation

            pred, truth, class_names, rows = predict_validation(run_dir, request.device, config)
            label = f"run {run_dir.name}"
        else:
            use_manifest = request.truth is None or not request.images
            rows = {row.id: row for row in load_rows(_rows_source(request.truth, config))} if use_manifest else {}
            if request.truth is not None:
                truth = read_class_csv(request.truth, "--truth", probs=False).labels
            else:
                truth = {i: str(r.target) for i, r in rows.items() if r.target is not None}
            pred = read_class_csv(request.pred, "--pred")
            class_names, label = getattr(config.data, "class_names", None), str(request.pred)
        evaluation = evaluate_classes(pred, truth, class_names=class_names, label=label)
        text = render_cls_report(evaluation, lambda image_id: _thumbnail(rows.get(image_id)), worst=request.worst)
        guard.tmp.write_text(text, encoding="utf-8")
    except BaseException:
        guard.discard()
        raise
    guard.commit()
    rep = evaluation.report
    echo(f"{evaluation.label}: accuracy {rep['accuracy']:.4f}  macro_f1 {rep['macro_f1']:.4f}")
    for note in evaluation.notes:
        echo(f"note: {note}")
    write_text(out.with_suffix(".json"), json.dumps({"report": rep, "wrong": evaluation.wrong}, indent=1) + "\n")
    echo(f"wrote {out}")
    return rep


def _rows_source(truth: Optional[str], config: Config) -> str:
    """Where the pictures of cls rows come from: a --truth manifest (it has an image column), else the
    configured manifest."""
    if truth is not None:
        try:
            with open(truth, newline="", encoding="utf-8-sig") as handle:
                header = [cell.strip().lower() for cell in next(csv.reader(handle), [])]
        except (OSError, UnicodeDecodeError, csv.Error):  # read_class_csv names the problem
            header = []
        if "image" in header:
            return truth
    return config.data.manifest


def _thumbnail(row, side: int = 192) -> Optional[bytes]:
    """A small picture of a manifest row (its region, or the whole image), or None."""
    if row is None:
        return None
    from segkit.ground.geometry import Window
    from segkit.io.raster import open_raster
    from segkit.report.overlay import display_size, png_bytes, to_display

    with open_raster(row.image) as raster:
        window = row.region or Window(0, 0, raster.height, raster.width)
        return png_bytes(to_display(raster.read(window, out_size=display_size(window, side, side))))
