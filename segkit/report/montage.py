"""A ranked montage: one panel per picked region, the image with the current prediction over it.

Each panel is the region's image (stretched for display, segkit.report.overlay.to_display) with the
predicted foreground tinted and outlined, and its rank and score written in the top-left corner;
panels run left to right, top to bottom, best first.
"""

from __future__ import annotations

import cv2
import numpy as np

from segkit.report.overlay import ALPHA, GAP, png_bytes, side_by_side

PRED_RGB = (255, 200, 0)  # predicted foreground: amber, distinct from the TP/FP/FN colours
COLUMNS = 4


def prediction_panel(rgb: np.ndarray, mask: np.ndarray, caption: str) -> np.ndarray:
    """rgb (HW3 uint8) with ``mask`` (HW, non-zero = predicted object) tinted and outlined, captioned."""
    out = rgb.astype(np.float32)
    hit = np.asarray(mask) != 0
    out[hit] = (1 - ALPHA) * out[hit] + ALPHA * np.array(PRED_RGB, np.float32)
    out = np.ascontiguousarray(out.astype(np.uint8))
    contours, _ = cv2.findContours(hit.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, PRED_RGB, 1)
    scale = max(0.35, out.shape[1] / 600)
    (w, h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (w + 6, h + base + 6), (0, 0, 0), -1)
    cv2.putText(out, caption, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def montage(panels: list[np.ndarray], columns: int = COLUMNS) -> np.ndarray:
    """Panels (HW3 uint8) in rows of ``columns``, ranked order, white gaps between them."""
    rows = [side_by_side(panels[i:i + columns]) for i in range(0, len(panels), columns)]
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + GAP * (len(rows) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    top = 0
    for r in rows:
        out[top: top + r.shape[0], : r.shape[1]] = r
        top += r.shape[0] + GAP
    return out


def montage_png(panels: list[np.ndarray], columns: int = COLUMNS) -> bytes:
    return png_bytes(montage(panels, columns))
