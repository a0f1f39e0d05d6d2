"""A generated aerial-like scene with exact building labels: a second benchmark image besides the nuclei.

Fields (smooth noise at several scales, green to brown), roads and dirt tracks (gray / brown
polylines), buildings along the roads (rotated rectangles, roofs in several palettes, half of them
with a lit and a shaded side split by a ridge, each with a cast shadow), distractors with roof
colours but no shadow and no building shape (parking lots, plazas, cars) and trees that hide parts
of roofs; then a slight blur and sensor noise. The label is the visible roof (trees over a roof are
background), so it has sharp straight edges and thin gaps, unlike the round nuclei.

    python tools/make_scene.py data/scene          # scene.tif (RGB uint8), scene_mask.png, manifest.csv

The manifest holds out the bottom quarter (rows 576-767) as validation, as the nuclei sample does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import tifffile

SIZE = 768
VAL_ROWS = 192
ROOFS = [(150, 70, 55), (175, 95, 70), (120, 120, 125), (190, 190, 185), (80, 80, 90), (140, 110, 90)]


def smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Noise in [0, 1] smoothed over ``scale`` pixels."""
    field = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), scale)
    return (field - field.min()) / (np.ptp(field) + 1e-6)


def ground(rng: np.random.Generator, size: int) -> np.ndarray:
    mix = 0.6 * smooth_noise(rng, size, 40) + 0.3 * smooth_noise(rng, size, 10) + 0.1 * smooth_noise(rng, size, 2)
    green, brown = np.array([70, 110, 55], np.float32), np.array([135, 115, 80], np.float32)
    return green * (1 - mix[..., None]) + brown * mix[..., None]


def polyline(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gently bending road across the scene: (N, 2) points (x, y)."""
    vertical = rng.random() < 0.5
    along = np.linspace(-40, size + 40, 8)
    across = rng.uniform(0.1, 0.9) * size + np.cumsum(rng.normal(0, 18, 8))
    pts = np.stack([across, along], 1) if vertical else np.stack([along, across], 1)
    return pts.astype(np.int32)


def rotated_box(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    return cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.int32)


def make_scene(seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(image HWC uint8, mask HW uint8 0/1) of one scene."""
    rng = np.random.default_rng(seed)
    image = ground(rng, size)
    mask = np.zeros((size, size), np.uint8)
    roads = [polyline(rng, size) for _ in range(4)]
    occupied = np.zeros((size, size), np.uint8)  # roads and buildings so far (with a margin)
    for i, pts in enumerate(roads):
        colour = (105, 105, 108) if i < 3 else (150, 125, 95)  # asphalt, one dirt track
        thickness = int(rng.integers(10, 18))
        cv2.polylines(image, [pts], False, colour, thickness=thickness)
        cv2.polylines(occupied, [pts], False, 1, thickness=thickness + 8)
    for _ in range(400):  # buildings beside the roads, not on them and not on each other
        pts = roads[int(rng.integers(0, 3))]
        k = int(rng.integers(0, len(pts) - 1))
        t = rng.random()
        x, y = pts[k] + t * (pts[k + 1] - pts[k])
        direction = (pts[k + 1] - pts[k]) / (np.linalg.norm(pts[k + 1] - pts[k]) + 1e-6)
        normal = np.array([-direction[1], direction[0]]) * rng.choice([-1, 1])
        w, h = rng.uniform(14, 46), rng.uniform(12, 34)
        cx, cy = np.array([x, y]) + normal * (h / 2 + rng.uniform(12, 30))
        angle = float(np.degrees(np.arctan2(direction[1], direction[0])) + rng.normal(0, 4))
        box = rotated_box(cx, cy, w, h, angle)
        footprint = np.zeros_like(mask)
        cv2.fillPoly(footprint, [box], 1)
        if footprint.sum() == 0 or (footprint & occupied).any():
            continue
        cv2.fillPoly(image, [box + np.array([5, 5])], (45, 50, 40))  # cast shadow (south-east)
        roof = np.array(ROOFS[int(rng.integers(0, len(ROOFS)))], np.float32) * rng.uniform(0.85, 1.15)
        cv2.fillPoly(image, [box], roof.tolist())
        if rng.random() < 0.5:  # gabled: one half shaded
            half = rotated_box(*(np.array([cx, cy]) + normal * h / 4), w, h / 2, angle)
            cv2.fillPoly(image, [half], (roof * 0.75).tolist())
        cv2.fillPoly(mask, [box], 1)
        occupied |= cv2.dilate(footprint, np.ones((15, 15), np.uint8))
    for _ in range(12):  # distractors: paved areas and cars with roof colours, no shadow
        box = rotated_box(*rng.uniform(0, size, 2), *rng.uniform(20, 60, 2), rng.uniform(0, 90))
        colour = ROOFS[int(rng.integers(0, len(ROOFS)))]
        cv2.fillPoly(image, [box], (np.array(colour) * 0.9).tolist())
        cv2.fillPoly(mask, [box], 0)
    for _ in range(60):
        box = rotated_box(*rng.uniform(0, size, 2), 8, 4, rng.uniform(0, 180))
        cv2.fillPoly(image, [box], ROOFS[int(rng.integers(0, len(ROOFS)))])
        cv2.fillPoly(mask, [box], 0)
    for _ in range(220):  # trees, some over roofs
        centre = tuple(int(v) for v in rng.uniform(0, size, 2))
        radius = int(rng.integers(4, 11))
        cv2.circle(image, (centre[0] + 3, centre[1] + 3), radius, (40, 55, 35), -1)
        cv2.circle(image, centre, radius, (45, 85, 40), -1)
        cv2.circle(mask, centre, radius, 0, -1)
    image = cv2.GaussianBlur(image, (0, 0), 0.8) + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    image, mask = make_scene(args.seed)
    tifffile.imwrite(args.out / "scene.tif", image, photometric="rgb")
    cv2.imwrite(str(args.out / "scene_mask.png"), mask)
    train_rows = SIZE - VAL_ROWS
    (args.out / "manifest.csv").write_text(
        "id,image,label,region,fold\n"
        f'scene_train,scene.tif,scene_mask.png,"0,0,{train_rows},{SIZE}",1\n'
        f'scene_val,scene.tif,scene_mask.png,"{train_rows},0,{VAL_ROWS},{SIZE}",0\n')
    print(f"{args.out}: {SIZE}x{SIZE} scene, building share {mask.mean():.3f} "
          f"(train {mask[:train_rows].mean():.3f}, val {mask[train_rows:].mean():.3f})")


if __name__ == "__main__":
    main()
