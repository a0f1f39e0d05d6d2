"""Export scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes) as a segkit cls dataset.

    python tools/make_digits.py data/digits            # everything below, 32x32 RGB PNGs
    python tools/make_digits.py /tmp/d --per-class 6   # a few images per class (test fixtures)

Writes, under OUT:
    train/<class>/<id>.png, test/<class>/<id>.png   one sub-folder per class (a stratified split)
    train.csv, test.csv                             manifests: id,image,class
    test_corrupted/<class>/<id>.png + test_corrupted.csv
        variant (a): the test images corrupted the way a document contest's test set was
        (rotation, flips, gaussian noise, colour/contrast shifts, blur); training stays clean
    train_noisy.csv + flipped.csv
        variant (b): the training manifest with ``--noise-rate`` of its labels flipped at random to
        another class; flipped.csv lists every flipped row (id, true_class, given_class) so that
        `segkit clean` can be scored

Every random choice is seeded (--seed), so the same command writes the same files. The images
are upscaled (bicubic, --scale) and written as 3 identical channels so that colour shifts are
colour shifts. Needs scikit-learn (pip install -e '.[dev]'); the data ships inside it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np

CLASSES = [str(c) for c in range(10)]


def load_digits_uint8(scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8*scale, 8*scale, 3) uint8 images and (N,) int labels from sklearn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("make_digits: needs scikit-learn (pip install scikit-learn, or pip install -e '.[dev]')")
    digits = load_digits()
    side = 8 * int(scale)
    images = []
    for image in digits.images:  # values 0..16
        grey = cv2.resize((image / 16.0).astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
        grey = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
        images.append(np.repeat(grey[:, :, None], 3, axis=2))
    return np.stack(images), digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of test rows: round(test_fraction * n_c) rows of every class c, at random."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        count = int(round(test_fraction * len(rows)))
        test[rng.choice(rows, size=count, replace=False)] = True
    return test


def corrupt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One test-time corruption: rotation, flips, colour/contrast shift, blur, gaussian noise.

    Written with numpy/cv2 rather than the albumentations transforms of the heavy-noise recipe,
    so the benchmark does not test the recipe on exactly its own transforms.
    """
    out = image.astype(np.float32) / 255.0
    h, w = out.shape[:2]
    if rng.random() < 0.7:
        angle = rng.uniform(-25, 25)
        matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
        out = cv2.warpAffine(out, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if rng.random() < 0.3:
        out = out[:, ::-1]
    if rng.random() < 0.3:
        out = out[::-1]
    if rng.random() < 0.8:  # per-channel gain and offset (a colour cast) and a contrast change
        gain = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
        offset = rng.uniform(-0.1, 0.15, size=3).astype(np.float32)
        contrast = rng.uniform(0.5, 1.1)
        mean = out.mean()
        out = (out - mean) * contrast + mean
        out = out * gain + offset
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    if rng.random() < 0.8:
        out = out + rng.normal(0.0, rng.uniform(0.03, 0.12), size=out.shape).astype(np.float32)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def flip_labels(labels: np.ndarray, rate: float, rng: np.random.Generator, classes: int = 10) -> np.ndarray:
    """A copy of ``labels`` with round(rate * n) of them moved to another class chosen uniformly."""
    noisy = labels.copy()
    rows = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    for row in rows:
        noisy[row] = (labels[row] + rng.integers(1, classes)) % classes
    return noisy


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        sys.exit(f"make_digits: cannot write {path}")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_digits(out: Path, *, scale: int = 4, test_fraction: float = 0.2, noise_rate: float = 0.1,
                per_class: int | None = None, seed: int = 0) -> dict:
    """Write the dataset and its two variants under ``out``; returns counts per part."""
    images, labels = load_digits_uint8(scale)
    ids = np.array([f"d{i:04d}" for i in range(len(labels))])
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        keep.sort()
        images, labels, ids = images[keep], labels[keep], ids[keep]
    rng = np.random.default_rng(seed)
    test = stratified_split(labels, test_fraction, rng)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": ~test, "test": test}
    manifest_rows = {}
    for part, rows in parts.items():
        manifest_rows[part] = []
        for i in np.flatnonzero(rows):
            relative = f"{part}/{labels[i]}/{ids[i]}.png"
            _write_png(out / relative, images[i])
            manifest_rows[part].append([ids[i], relative, CLASSES[labels[i]]])
        _write_csv(out / f"{part}.csv", ["id", "image", "class"], manifest_rows[part])

    corrupt_rng = np.random.default_rng([seed, 1])
    corrupted = []
    for i in np.flatnonzero(test):
        relative = f"test_corrupted/{labels[i]}/{ids[i]}.png"
        _write_png(out / relative, corrupt(images[i], corrupt_rng))
        corrupted.append([ids[i], relative, CLASSES[labels[i]]])
    _write_csv(out / "test_corrupted.csv", ["id", "image", "class"], corrupted)

    train_idx = np.flatnonzero(~test)
    noisy = flip_labels(labels[train_idx], noise_rate, np.random.default_rng([seed, 2]))
    _write_csv(out / "train_noisy.csv", ["id", "image", "class"],
               [[ids[i], f"train/{labels[i]}/{ids[i]}.png", CLASSES[n]] for i, n in zip(train_idx, noisy)])
    flipped = [[ids[i], CLASSES[labels[i]], CLASSES[n]] for i, n in zip(train_idx, noisy) if n != labels[i]]
    _write_csv(out / "flipped.csv", ["id", "true_class", "given_class"], flipped)
    return {"train": int((~test).sum()), "test": int(test.sum()), "flipped": len(flipped)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the 8x8 images (default 4: 32x32)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of every class")
    parser.add_argument("--noise-rate", type=float, default=0.1, help="share of training labels flipped")
    parser.add_argument("--per-class", type=int, default=None, help="keep only the first N images of each class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1 or not 0 <= args.noise_rate < 1 or args.scale < 1:
        parser.error("need 0 < --test-fraction < 1, 0 <= --noise-rate < 1 and --scale >= 1")
    counts = make_digits(args.out, scale=args.scale, test_fraction=args.test_fraction, noise_rate=args.noise_rate,
                         per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.out}: {counts['train']} train, {counts['test']} test (+ corrupted copy), "
          f"{counts['flipped']} flipped labels in train_noisy.csv")


if __name__ == "__main__":
    main()
