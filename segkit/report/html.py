"""report.html: one self-contained file (every picture embedded as a base64 PNG, no other files).

Sections: what was scored (and what was skipped), the summary and per-class tables, score
histograms, the K worst items as TP/FP/FN overlays, the per-image table and, with --vs, what got
better or worse with side-by-side overlays of the largest changes. Tables sort by a click on a
column header (a few lines of inline JavaScript; the page works without it).
"""

from __future__ import annotations

import html
import io
import time
from typing import Optional

from segkit.report.evaluate import Comparison, Evaluation
from segkit.report.overlay import FN_RGB, FP_RGB, TP_RGB, Pictures, data_uri

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2;cursor:pointer}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}figcaption{font-size:13px}
.key span{display:inline-block;width:14px;height:14px;margin:0 4px -2px 12px}.note{color:#8a4b00}
.up{color:#17702a}.down{color:#b3261e}
"""
SORT_JS = """
document.querySelectorAll('th').forEach(function(th){th.addEventListener('click',function(){
var t=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th),b=t.tBodies[0];
var rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(x,y){var a=x.cells[i].textContent,c=y.cells[i].textContent,n=parseFloat(a),m=parseFloat(c);
var r=(isNaN(n)||isNaN(m))?a.localeCompare(c):n-m;return asc?r:-r;});rows.forEach(function(r){b.appendChild(r);});});});
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(png: bytes, caption: str) -> str:
    return f'<figure><img src="{data_uri(png)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def histogram_png(series: dict[str, list[float]], title: str) -> bytes:
    """One PNG with a histogram per named series of scores in [0, 1]."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * max(1, len(series)), 2.8))
    axes = fig.subplots(1, max(1, len(series)), squeeze=False)[0]
    for ax, (name, values) in zip(axes, series.items()):
        ax.hist(values, bins=20, range=(0, 1), color="#4a78c2")
        ax.set_title(f"{name} ({len(values)})", fontsize=10)
        ax.set_xlabel(name)
    axes[0].set_ylabel(f"{title}: count")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"<script>{SORT_JS}</script></body></html>")


def _legend() -> str:
    swatch = lambda rgb, text: f"<span style='background:rgb{rgb}'></span>{text}"  # noqa: E731
    return ("<p class='key'>" + swatch(TP_RGB, "true positive") + swatch(FP_RGB, "false positive (predicted, not true)")
            + swatch(FN_RGB, "false negative (true, missed)") + "</p>")


def seg_sections(evaluation: Evaluation, pictures: Pictures, *, worst: int) -> str:
    """Summary, per class, histograms, the `worst` lowest-Dice items and the per-image table."""
    summary = evaluation.summary()
    parts = [f"<p>prediction: <b>{html.escape(evaluation.label)}</b>; {summary['images']} image(s), "
             f"{summary['items']} item(s) scored</p>"]
    parts += [f"<p class='note'>{html.escape(note)}</p>" for note in evaluation.notes]
    keys = [k for k in ("dice", "iou", "precision", "recall", "dice_pooled", "object_f1", "dsb") if k in summary]
    parts.append("<h2>Summary</h2>" + table(keys, [[summary[k] for k in keys]]))
    parts.append("<p>Means over images; dice_pooled pools all pixels; object_f1 pools objects matched at IoU &ge; 0.5; "
                 "dsb (runs with instance targets) is the Data Science Bowl score, the mean over IoU thresholds "
                 "0.5:0.05:0.95 of TP / (TP + FP + FN), averaged over images. An image with empty truth and empty prediction scores 1.</p>")
    per_class = evaluation.per_class()
    if len(per_class) > 1:
        names = ["class", "dice", "iou", "precision", "recall", "dice_pooled", "true_px"]
        parts.append("<h2>Per class</h2>" + table(names, [[row[n] for n in names] for row in per_class]))
    item_scores = [item.scores() for item in evaluation.items]
    series = {name: [s[name] for s in item_scores] for name in ("dice", "iou", "object_f1", "dsb") if item_scores and name in item_scores[0]}
    if item_scores:
        parts.append("<h2>Score histograms</h2>" + figure(histogram_png(series, "per item"), "scores per image or tile"))
    order = sorted(range(len(evaluation.items)), key=lambda i: (item_scores[i]["dice"], i))[:worst]
    if order:
        parts.append(f"<h2>The {len(order)} worst items</h2>" + _legend())
        for i in order:
            item = evaluation.items[i]
            png = pictures.panels(item.image_id, item.window, [evaluation.label])
            parts.append(figure(png, f"{item.image_id} rows {item.window.row}-{item.window.bottom} cols "
                                     f"{item.window.col}-{item.window.right}: dice {item_scores[i]['dice']:.4f}"))
    per_image = evaluation.per_image()
    names = ["image"] + [k for k in ("dice", "iou", "precision", "recall", "object_f1", "dsb") if per_image and k in next(iter(per_image.values()))]
    rows = sorted(([image_id] + [s[k] for k in names[1:]] for image_id, s in per_image.items()), key=lambda r: r[1])
    parts.append("<h2>Per image</h2>" + table(names, rows))
    return "\n".join(parts)


def vs_sections(comparison: Comparison, pictures: Pictures, *, changes: int) -> str:
    """Better / worse per image, the largest item changes side by side (image | new | old)."""
    s = comparison.summary()
    parts = [f"<h2>Against {html.escape(comparison.old.label)}</h2>",
             f"<p>{s['common']} image(s) in both: <span class='up'>{s['better']} better</span>, "
             f"<span class='down'>{s['worse']} worse</span>, {s['same']} unchanged; mean {comparison.measure} "
             f"{s['new_mean']:.4f} for {html.escape(comparison.new.label)} vs {s['old_mean']:.4f} for "
             f"{html.escape(comparison.old.label)}.</p>"]
    if comparison.only_new:
        parts.append(f"<p class='note'>only in this prediction's images (not compared): {html.escape(', '.join(comparison.only_new))}</p>")
    if comparison.only_old:
        parts.append(f"<p class='note'>only in {html.escape(comparison.old.label)}'s images (not compared): "
                     f"{html.escape(', '.join(comparison.only_old))}</p>")
    changed = [row for row in comparison.items if row["delta"] != 0][:changes]
    if changed:
        parts.append(f"<h3>The {len(changed)} largest changes</h3><p>image | this prediction | "
                     f"{html.escape(comparison.old.label)}</p>" + _legend())
        for row in changed:
            png = pictures.panels(row["image_id"], row["window"], [comparison.new.label, comparison.old.label])
            parts.append(figure(png, f"{row['key']}: {comparison.measure} {row['old']:.4f} -> {row['new']:.4f} "
                                     f"({row['delta']:+.4f})"))
    rows = [[r["id"], r["new"], r["old"], r["delta"]] for r in comparison.images if r["delta"] != 0]
    parts.append("<h3>Changed images</h3>" + table(["image", comparison.new.label, comparison.old.label, "change"],
                                                    rows))
    return "\n".join(parts)


def render_seg_report(evaluation: Evaluation, pictures: Pictures, *, worst: int = 12,
                      comparison: Optional[Comparison] = None, changes: int = 12, title: str = "segkit evaluate") -> str:
    body = seg_sections(evaluation, pictures, worst=worst)
    if comparison is not None:
        body += vs_sections(comparison, pictures, changes=changes)
    body += f"<p style='color:#888'>written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
    return page(title, body)

