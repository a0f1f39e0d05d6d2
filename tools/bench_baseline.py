"""segkit's recipe vs a bare training loop, for the same CPU-second budgets, side by side in one run.

The bare loop is written here in plain torch + smp, as a user would write it instead of segkit:
Unet resnet18 (random init), batches of 8 random windows (uniform positions in the training rows,
the recipe's field of view resized to its network size with the same resampling segkit uses),
random flips and rot90, AdamW lr 1e-3 constant, Dice + BCE, fp32, no validation while training.
segkit's side is `segkit train --config RECIPE` through the library (segkit.train.fit.fit): its
sampler, normalization, augmentation, schedule, per-epoch validation and checkpoints.

Budgets alternate: the bare loop trains until it has used B CPU seconds (time.process_time, which
other load on the machine moves much less than wall time), then segkit's recipe trains a fresh
run of as many optimizer steps as the bare loop managed in B seconds (its schedule sized to that
length; its own CPU seconds are printed, including its per-epoch validation), then the next
budget. Both are scored on the same held-out region by the same tiled predictor
(segkit.train.validate.validate, the recipe's fov, size, overlap and blending):

    bare:        the bare loop's weights at B, no TTA
    segkit:      segkit's last checkpoint (its EMA weights when train.ema is on), no TTA
    segkit+:     segkit as `infer` predicts: infer.tta views x infer.epochs checkpoints

    python tools/make_scene.py /tmp/scene
    python tools/bench_baseline.py --image nuclei --image /tmp/scene --budgets 15,30,60,120
    python tools/bench_baseline.py --variant "cos:train.scheduler=cosine,train.lr=0.002"  # more recipes

Images: "nuclei" is the bundled sample (rows 384-511 held out); any folder with a manifest.csv
of one training (fold 1) and one validation (fold 0) region of one image works
(tools/make_scene.py writes one). torch runs on --threads threads (default 1, to share the machine).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import segmentation_models_pytorch as smp  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from segkit.data.preprocess import Preprocess  # noqa: E402
from segkit.ground.config import load_config  # noqa: E402
from segkit.infer.run import load_ensemble  # noqa: E402
from segkit.train import from_config as fc  # noqa: E402
from segkit.train.fit import fit  # noqa: E402
from segkit.train.validate import validate  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "segkit" / "sample"


def read_image(folder: Path) -> dict:
    """The image (HWC uint8), mask (HW 0/1), training and validation regions of a manifest folder."""
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    regions = {int(r["fold"]): [int(v) for v in r["region"].split(",")] for r in rows}
    image = tifffile.imread(folder / rows[0]["image"])
    image = image[..., None] if image.ndim == 2 else image
    mask = (cv2.imread(str(folder / rows[0]["label"]), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
    assert image.dtype == np.uint8 and mask.shape == image.shape[:2], (image.dtype, mask.shape)
    return {"image": image, "mask": mask, "train": regions[1], "val": regions[0], "manifest": folder / "manifest.csv"}


class BareLoop:
    """The loop a user writes instead of segkit (see the module docstring); CPU time counted in .cpu."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, train: list, fov_px: int, size: int, seed: int):
        r, c, h, w = train
        self.image = image[r:r + h, c:c + w].astype(np.float32) / 255.0
        self.mask = mask[r:r + h, c:c + w]
        self.mean = self.image.reshape(-1, image.shape[2]).mean(0)
        self.std = self.image.reshape(-1, image.shape[2]).std(0) + 1e-6
        self.fov_px, self.size = fov_px, size
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.model = smp.Unet("resnet18", encoder_weights=None, in_channels=image.shape[2], classes=1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.dice, self.bce = smp.losses.DiceLoss("binary"), nn.BCEWithLogitsLoss()
        self.steps, self.cpu = 0, 0.0

    def batch(self, n: int = 8):
        xs, ys = [], []
        for _ in range(n):
            r = self.rng.integers(0, self.image.shape[0] - self.fov_px + 1)
            c = self.rng.integers(0, self.image.shape[1] - self.fov_px + 1)
            x = (self.image[r:r + self.fov_px, c:c + self.fov_px] - self.mean) / self.std
            y = self.mask[r:r + self.fov_px, c:c + self.fov_px]
            if self.size != self.fov_px:  # the resampling segkit's reader uses: area down, nearest for labels
                x = cv2.resize(x, (self.size, self.size), interpolation=cv2.INTER_AREA).reshape(self.size, self.size, -1)
                y = cv2.resize(y, (self.size, self.size), interpolation=cv2.INTER_NEAREST_EXACT)
            if self.rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if self.rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
            k = int(self.rng.integers(0, 4))
            xs.append(np.rot90(x, k).transpose(2, 0, 1).copy())
            ys.append(np.rot90(y, k)[None].copy())
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).float()

    def train_until(self, cpu_seconds: float, clock=time.process_time) -> None:
        """Train until ``cpu_seconds`` of ``clock`` (CPU time; tools/bench_auto.py passes wall time) are used."""
        self.model.train()
        while self.cpu < cpu_seconds:
            started = clock()
            x, y = self.batch()
            logits = self.model(x)
            loss = self.dice(logits, y) + self.bce(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            self.cpu += clock() - started

    def preprocess(self, channels) -> Preprocess:
        """Its normalization as a segkit Preprocess, so the same tiled predictor scores it."""
        return Preprocess(channels, [float(v) for v in self.mean], [float(v) for v in self.std])


def score(models, val_pairs, preprocess, settings, tta: str) -> float:
    return validate(models, val_pairs, preprocess, dataclasses.replace(settings, tta=tta), torch.device("cpu"))["dice"]


def run_segkit(base: list[str], recipe: str, variant: list[str], steps: int, runs: Path, name: str) -> tuple:
    """A fresh segkit run of about ``steps`` optimizer steps; (config, run dir, CPU seconds)."""
    config = load_config(recipe, base + variant)
    t = config.train
    epochs = max(1, min(t.epochs, steps))
    windows = max(t.batch_size, round(steps / epochs) * t.batch_size)
    config = load_config(recipe, base + variant + [f"train.epochs={epochs}", f"train.windows_per_epoch={windows}",
                                                   f"run.runs_dir={runs}", f"run.name={name}"])
    started = time.process_time()
    run_dir = fit(config)
    return config, run_dir, time.process_time() - started


def bench_image(label: str, folder: Path, args, variants: dict, runs: Path) -> list[dict]:
    data_ = read_image(folder)
    base = [f"data.manifest={data_['manifest']}", "run.progress=false", "train.amp=false", f"run.seed={args.seed}",
            "train.keep_last=3"]
    config = load_config(args.recipe, base)
    config = fc.with_fov(config)
    data = fc.training_data(config)
    settings = fc.validation_settings(config)
    channels = fc.preprocess_for(config, data).channels
    bare = BareLoop(data_["image"], data_["mask"], data_["train"], config.data.fov_px, config.data.size, args.seed)
    assert np.allclose(Preprocess(channels).stack(data_["image"][:8, :8]), data_["image"][:8, :8] / 255.0, atol=1e-6)
    print(f"\n== {label}: {folder}  fov {config.data.fov_px} -> size {config.data.size}; "
          f"segkit recipe {args.recipe}, fp32", flush=True)
    rows = []
    for budget in args.budgets:
        bare.train_until(budget)
        bare_dice = score([(bare.model, 1.0)], data.val_pairs, bare.preprocess(channels), settings, "none")
        row = {"image": label, "budget": budget, "bare_steps": bare.steps, "bare_cpu": round(bare.cpu, 1),
               "bare": round(bare_dice, 4)}
        for vname, overrides in variants.items():
            cfg, run_dir, cpu = run_segkit(base, args.recipe, overrides, bare.steps, runs, f"{label}_{vname}_{budget}")
            plain = load_ensemble([run_dir], "last", torch.device("cpu"))
            full = load_ensemble([run_dir], cfg.infer.epochs, torch.device("cpu"))
            row[f"{vname}_cpu"] = round(cpu, 1)
            row[f"{vname}_steps"] = cfg.train.epochs * (cfg.train.windows_per_epoch // cfg.train.batch_size)
            row[vname] = round(score(plain.models, data.val_pairs, plain.preprocess, settings, "none"), 4)
            row[f"{vname}+"] = round(score(full.models, data.val_pairs, full.preprocess, settings, cfg.infer.tta), 4)
            swa = json.loads((run_dir / "run.json").read_text()).get("swa")
            if swa:
                row[f"{vname}_swa"] = round(swa["val_dice"], 4)
        rows.append(row)
        cells = [f"{k} {v}" for k, v in row.items() if k not in ("image",)]
        print(f"{label} B={budget}s  " + "  ".join(cells), flush=True)
    return rows


def table(rows: list[dict], variants: dict) -> None:
    print("\n| image | CPU s budget | bare steps | bare Dice | recipe | steps | CPU s | Dice | ratio | "
          "Dice TTA+ens | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for v in variants:
            def ratio(value):  # a bare loop still at Dice ~0 has no meaningful ratio
                return f"{value / row['bare']:.3f}" if row["bare"] >= 0.01 else "-"

            print(f"| {row['image']} | {row['budget']:g} | {row['bare_steps']} | {row['bare']:.4f} | {v} | "
                  f"{row[v + '_steps']} | {row[v + '_cpu']} | {row[v]:.4f} | {ratio(row[v])} | "
                  f"{row[v + '+']:.4f} | {ratio(row[v + '+'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="append", help="nuclei (the sample) or a folder with manifest.csv")
    parser.add_argument("--budgets", default="15,30,60,120", help="CPU-second budgets, ascending")
    parser.add_argument("--recipe", default="sample", help="segkit config / recipe under test")
    parser.add_argument("--variant", action="append", default=[],
                        help='NAME:key=value,key=value  extra segkit recipes (overrides on --recipe)')
    parser.add_argument("--no-default", action="store_true", help="skip the recipe as it is")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    torch.set_num_threads(args.threads)
    variants = {} if args.no_default else {"segkit": []}
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        variants[name] = [o for o in overrides.split(",") if o]
    runs = Path(args.workdir or tempfile.mkdtemp(prefix="bench_baseline_"))
    load = os.getloadavg()
    print(f"runs in {runs}; torch threads {args.threads}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    for image in args.image or ["nuclei"]:
        folder = SAMPLE if image == "nuclei" else Path(image)
        rows += bench_image("nuclei" if image == "nuclei" else folder.name, folder, args, variants, runs)
    table(rows, variants)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
