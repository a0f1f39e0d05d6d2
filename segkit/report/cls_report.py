"""`segkit evaluate` for class predictions: accuracy, macro F1, per-class scores, the confusion
matrix and the most confidently wrong examples, from CSV files.

A prediction CSV has an id column (`id`, else the first), a label column (`label`, `class`,
`target` or `prediction`, else the second) and, optionally, one probability column per class
(what `segkit infer --task cls --probs` writes); with probabilities, the wrong rows are ranked by
the probability given to the wrong class. The truth is a CSV with the same id and label columns,
any other columns ignored: a class manifest (`id,image,class`, what tools/make_digits.py writes)
is one; by default the configured manifest's `class` column. Labels may be class ids or names (`data.class_names` gives the order; without it
names are sorted). The scores are segkit.metrics.cls's.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.metrics.cls import ConfusionAccumulator
from segkit.report.html import figure, page, table

LABEL_COLUMNS = ("label", "class", "target", "prediction")


@dataclass
class ClassRows:
    labels: dict  # id -> label text
    probs: dict = field(default_factory=dict)  # id -> (classes,) probabilities, when the file has them
    prob_columns: list = field(default_factory=list)


def read_class_csv(path, what: str, probs: bool = True) -> ClassRows:
    """The id and label columns of a CSV; with ``probs`` every other column is a class probability,
    without (a truth file, e.g. a manifest) the other columns are ignored and rows without a label skipped."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = list(reader)
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read {what} ({exc.strerror})") from None
    lower = [h.lower() for h in header]
    if len(header) < 2:
        raise SegkitError(f"{path}: {what} needs columns id,label (got {header})")
    id_col = lower.index("id") if "id" in lower else 0
    label_col = next((lower.index(c) for c in LABEL_COLUMNS if c in lower), 1 if id_col == 0 else 0)
    prob_cols = [i for i in range(len(header)) if i not in (id_col, label_col)] if probs else []
    out = ClassRows({}, prob_columns=[header[i] for i in prob_cols])
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(id_col, label_col):
            raise SegkitError(f"{path}: line {line}: expected at least {max(id_col, label_col) + 1} fields")
        if not probs and not row[label_col].strip():
            continue
        out.labels[row[id_col].strip()] = row[label_col].strip()
        if prob_cols:
            try:
                out.probs[row[id_col].strip()] = np.array([float(row[i]) for i in prob_cols])
            except (ValueError, IndexError):
                raise SegkitError(f"{path}: line {line}: {what} is read as id ({header[id_col]}), label "
                                  f"({header[label_col]}) and one probability column per class; "
                                  f"{', '.join(out.prob_columns)[:200]} must hold numbers") from None
    return out


def class_index(values: list[str], class_names: Optional[list]) -> tuple[list[str], dict]:
    """(class names in order, {label text: class id}); labels are ids or names."""
    if class_names:
        names = [str(n) for n in class_names]
        index = {n: i for i, n in enumerate(names)} | {str(i): i for i in range(len(names))}
    elif all(v.lstrip("-").isdigit() for v in values):
        top = max((int(v) for v in values), default=0)
        names = [str(i) for i in range(top + 1)]
        index = {n: i for i, n in enumerate(names)}
    else:
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
    return names, index


@dataclass
class ClassEvaluation:
    label: str
    names: list
    report: dict  # segkit.metrics.cls report: accuracy, macro_f1, per_class, confusion
    wrong: list  # (id, true name, predicted name, confidence or None), most confident first
    notes: list


def evaluate_classes(pred: ClassRows, truth: dict, *, class_names: Optional[list] = None,
                     label: str = "prediction") -> ClassEvaluation:
    """Score predicted labels against truth {id: label text} on the ids both have."""
    common = [i for i in truth if i in pred.labels]
    if not common:
        raise SegkitError(f"{label}: no prediction has an id in the truth ({len(truth)} labelled rows)")
    names, index = class_index([truth[i] for i in common] + [pred.labels[i] for i in common], class_names)
    unknown = sorted({v for v in [truth[i] for i in common] + [pred.labels[i] for i in common] if v not in index})
    if unknown:
        raise SegkitError(f"{label}: class(es) {', '.join(unknown[:5])} not in the class names ({', '.join(names)})")
    t = np.array([index[truth[i]] for i in common])
    p = np.array([index[pred.labels[i]] for i in common])
    acc = ConfusionAccumulator(len(names))
    acc.update(p, t)
    notes = []
    missing = [i for i in truth if i not in pred.labels]
    extra = [i for i in pred.labels if i not in truth]
    if missing:
        notes.append(f"{len(missing)} labelled row(s) have no prediction and were not scored: {', '.join(missing[:5])}")
    if extra:
        notes.append(f"predictions for {len(extra)} row(s) without labels were skipped")
    wrong = []
    for k in np.flatnonzero(p != t):
        image_id = common[k]
        probs = pred.probs.get(image_id)
        confidence = float(probs[p[k]]) if probs is not None and p[k] < len(probs) else None
        wrong.append((image_id, names[t[k]], names[p[k]], confidence))
    wrong.sort(key=lambda w: -(w[3] if w[3] is not None else -1))
    return ClassEvaluation(label, names, acc.report(names), wrong, notes)


def confusion_png(matrix: np.ndarray, names: list) -> bytes:
    from matplotlib.figure import Figure

    n = len(names)
    fig = Figure(figsize=(1.0 + 0.45 * n, 0.8 + 0.45 * n))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for r in range(n):
        for c in range(n):
            ax.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[r, c] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def render_cls_report(evaluation: ClassEvaluation, thumbnail=None, *, worst: int = 12,
                      title: str = "segkit evaluate (classes)") -> str:
    """thumbnail(id) -> PNG bytes or None: a picture of a row for the confidently wrong section."""
    rep = evaluation.report
    parts = [f"<p>prediction: <b>{html.escape(evaluation.label)}</b></p>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in evaluation.notes]
    parts.append("<h2>Summary</h2>" + table(["accuracy", "macro_f1", "rows"],
                                            [[rep["accuracy"], rep["macro_f1"], int(np.sum(rep["confusion"]))]]))
    rows = [[name, s["precision"], s["recall"], s["f1"], s["support"]] for name, s in rep["per_class"].items()]
    parts.append("<h2>Per class</h2>" + table(["class", "precision", "recall", "f1", "support"], rows))
    matrix = np.array(rep["confusion"])
    parts.append("<h2>Confusion matrix</h2>" + figure(confusion_png(matrix, evaluation.names), "rows: true, columns: predicted"))
    parts.append(table(["true \\ predicted"] + evaluation.names,
                       [[n] + [int(v) for v in row] for n, row in zip(evaluation.names, matrix)]))
    shown = evaluation.wrong[:worst]
    if shown:
        parts.append(f"<h2>The {len(shown)} most confidently wrong</h2>")
        for image_id, true, predicted, confidence in shown:
            caption = f"{image_id}: true {true}, predicted {predicted}" + (f" (p={confidence:.3f})" if confidence is not None else "")
            png = thumbnail(image_id) if thumbnail is not None else None
            parts.append(figure(png, caption) if png else f"<p>{html.escape(caption)}</p>")
    return page(title, "\n".join(parts))
