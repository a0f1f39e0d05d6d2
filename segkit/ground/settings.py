"""Every config key of segkit: one typed field per key, in one dataclass per section.

A field holds the key's default, its allowed values, its CLI flag and one line of help
(:func:`segkit.ground.fields.setting`). ``segkit config`` prints these defaults,
``segkit config --explain KEY`` one key, and the docs' configuration reference lists them all.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Iterator, Optional

from segkit.ground.fields import Setting, describe, setting

TASKS = ("seg", "cls", "seg+cls")


@dataclass
class RunConfig:
    name: Optional[str] = setting(None, "Run directory name under runs_dir; null = <command>-<timestamp>.", flag="--name")
    runs_dir: str = setting("runs", "Parent folder of every run directory.", flag="--runs-dir")
    seed: int = setting(42, "Seeds windows, augmentation, weight initialisation and folds.")
    device: str = setting("auto", "auto (CUDA when available) | cpu | cuda | cuda:N.", flag="--device")
    dist_timeout_s: float = setting(1800.0, "torchrun: seconds a collective inside a training step waits for a "
                                            "missing rank.", minimum=1e-3,
                                    doc="Gathers of results and barriers wait for slower ranks without this limit.")
    progress: bool = setting(True, "Progress bars on long work (plain lines with rate and ETA off a terminal).")
    log: str = setting("none", "Extra epoch logging (needs tensorboard, or the mlflow extra).",
                       choices=("none", "tensorboard", "mlflow"), flag="--log")
    tracking_uri: Optional[str] = setting(None, "MLflow tracking URI; null = sqlite:///<runs_dir>/mlflow.db.",
                                          flag="--tracking-uri")
    experiment: str = setting("segkit", "MLflow experiment the runs are logged under.")


@dataclass
class DataConfig:
    manifest: str = setting("sample", "Dataset CSV (id,image,label,class,group,region,fold), a folder with "
                                      "images/ + masks/, or 'sample' (the bundled nuclei image).")
    fov_px: Optional[int] = setting(None, "Source pixels one window covers; null = the first stage's size.",
                                    flag="--fov", minimum=1)
    size: int = setting(256, "Pixels the network sees; windows are resampled fov_px -> size.", flag="--size",
                        minimum=1,
                        doc="Progressive resizing (3/4 of the epochs at half the size, then `finetune` at full size, "
                            "equal optimizer steps) changed Dice by -0.101 +- 0.066 (nuclei) and -0.082 +- 0.072 "
                            "(scene), within noise, in docs/ablation.md's 24-step runs; it saved about 30 % CPU.")
    folds: int = setting(5, "Folds made when the manifest has no fold column.", minimum=1)
    fold_method: str = setting("random", "How rows are put into folds (group: a group never spans two folds).",
                               choices=("random", "stratified", "group"))
    val_fold: int = setting(0, "The validation fold; every other fold trains.", flag="--fold", minimum=0)
    foreground_share: float = setting(0.33, "Share of windows centred on a labelled object (nnU-Net uses 0.33).",
                                      minimum=0, maximum=1)
    tissue: str = setting("none", "Usable area from a thumbnail: none | saturation (RGB histology) | otsu.",
                          choices=("none", "saturation", "otsu"))
    pad_mode: str = setting("constant", "Windows past the image border: constant (zeros) | reflect.",
                            choices=("constant", "reflect"))
    small_images: str = setting("pad", "Images no larger than fov_px: pad (window = image padded to fov_px) | "
                                       "resize (the image stretched to size).", choices=("pad", "resize"),
                                doc="An image (or region) that fits in one window is one window: it is drawn by "
                                    "image (each weighs one window), and validation and inference batch many such "
                                    "images per forward pass instead of tiling each. `pad` keeps the pixel scale "
                                    "(the window is fov_px, past the image padded by data.pad_mode); `resize` "
                                    "reads the whole image at size x size and resizes the prediction back.")
    rle_order: str = setting("F", "RLE labels: F column-major (Kaggle HuBMAP) | C row-major.", choices=("F", "C"))
    class_map: Optional[dict] = setting(None, "{label value or polygon property value: class id}; null = value as is.")
    class_property: Optional[str] = setting(None, "GeoJSON property that holds an object's class.")
    channels: Optional[list] = setting(
        None, "Multi-contrast channel stacking, one entry per network channel; null = one channel per band.",
        doc="Each entry reads one band through a window: `{band: 0, window: [-1000, 400]}` (low/high), "
            "`{band: 0, center: 40, width: 400}`, `{band: 0, percentiles: [1, 99]}` (of the image, on a "
            "thumbnail) or `{band: 0, preset: lung, gamma: 1.0}` (CT presets: lung, mediastinum, bone, ...). "
            "With null, integers wider than 8 bits are windowed to their 1-99th percentile, others scaled by "
            "the dtype's range. On 8-bit images, percentile windows on every band changed Dice by +0.006 +- 0.015 "
            "(nuclei) and -0.040 +- 0.029 (scene), within noise (docs/ablation.md; CT contrasts not measured).")
    normalize: bool = setting(True, "Per-channel mean/std over sampled training windows (saved in the run).")
    stats_windows: int = setting(64, "Windows sampled for the normalization statistics.", minimum=1)
    mean: Optional[list] = setting(None, "Per-channel mean; given with std (e.g. from `segkit stats`), used as is.")
    std: Optional[list] = setting(None, "Per-channel std; given with mean, used as is.")
    augment: Optional[dict] = setting(None, "Albumentations pipeline in its serialized form (A.to_dict).",
                                      doc="Recipes: `--config augment_baseline`, `--config augment_heavy_noise`. "
                                          "The heavy-noise preset against flips alone on clean validation data: "
                                          "Dice -0.005 +- 0.057 (nuclei), -0.105 +- 0.101 (scene), within noise "
                                          "(docs/ablation.md); it is meant for test data noisier than training.")
    copy_paste: Optional[dict] = setting(None, "Object copy-paste, e.g. {p: 0.5, count: [1, 3]}; null = off.",
                                         doc="Off in every recipe: p 0.5 changed Dice by -0.016 +- 0.008 (nuclei) "
                                             "and -0.015 +- 0.039 (scene), object F1 -0.037 / +0.023, all within "
                                             "noise (docs/ablation.md, 3 seeds; pasted places are uniform at random).")
    workers: Optional[int] = setting(None, "DataLoader worker processes; null = auto (CUDA: up to 8 per GPU "
                                           "process with pinned memory; CPU: 0).", minimum=0)
    class_names: Optional[list] = setting(
        None, "Names by class id (seg: background first); null = 'class K' (cls: the manifest's names).",
        doc="seg: e.g. [background, tumour, stroma], used in --polygons (QuPath classification), --mask and "
            "--probs. cls: the image classes; the manifest's class column holds names or ids; null = the sorted "
            "names of the manifest (or its ids), saved in the run.")
    group_pattern: Optional[str] = setting(
        None, "Regex over the image file stem; rows without a group take its first capture group.",
        doc="For example `'^(.+)_slice\\d+$'` keeps a scan's slices in one fold (needs fold_method: group).")
    crop_scale: Optional[list] = setting(None, "cls: [min, max] share of the image area cropped at random, then "
                                               "resized; null = the whole image.")
    class_balanced: bool = setting(False, "cls: draw every class equally often (off: with noisy labels it fits "
                                          "the rare classes' noise).",
                                   doc="On the balanced, 10 %-noisy digits: macro F1 +0.007 +- 0.075, within noise "
                                       "(docs/ablation.md); `segkit auto` turns it on for imbalanced classes.")
    cls_from_mask: int = setting(1, "seg+cls: a tile holding >= this many foreground source pixels is 'object'.",
                                 minimum=0)
    targets: Optional[object] = setting(
        None, "Instance targets [body, border, contact] or 'instances'; null = plain class masks.",
        doc="One output channel each; labels are then read as objects (id raster, polygons, per-object RLE) "
            "and inference splits objects with a seeded watershed. Against plain masks (3 seeds, 24-step runs, "
            "docs/ablation.md): object F1 -0.060 +- 0.034 (nuclei), +0.005 +- 0.249 (scene), within noise.")
    border_px: int = setting(2, "targets: width of the border band inside each object, source pixels.")
    contact_px: int = setting(2, "targets: pixels within this distance of two objects are contact, source pixels.")


@dataclass
class ModelConfig:
    arch: str = setting("Unet", "Any segmentation_models_pytorch architecture: Unet, UnetPlusPlus, FPN, ...")
    encoder: str = setting("resnet18", "Encoder name as smp knows it (resnet34, efficientnet-b0, ...).")
    encoder_weights: Optional[str] = setting(None, "null (random init) | imagenet (downloads once; needs internet) | "
                                                   "a local weights file (.pth/.pt/.safetensors; offline sites).")
    classes: int = setting(1, "1 = binary (sigmoid); N > 1 = multiclass (softmax, class 0 = background).",
                           minimum=1)
    freeze_fraction: float = setting(0.0, "Share of encoder parameter tensors frozen (e.g. 0.9 for a late tune).",
                                     minimum=0, maximum=1)


def _default_loss() -> list:
    return [{"name": "dice", "weight": 1.0}, {"name": "soft_bce", "weight": 1.0}]


def _default_cls_loss() -> list:
    return [{"name": "ce", "weight": 1.0}]


@dataclass
class TrainConfig:
    epochs: int = setting(10, "Epochs of this stage.", flag="--epochs", minimum=1)
    windows_per_epoch: int = setting(512, "Random windows drawn per epoch (seg); a cls epoch is one pass over the "
                                          "training rows.", minimum=1)
    subset: float = setting(1.0, "Fraction of those windows (or cls rows) used, for fast experiments.",
                            flag="--subset", minimum=1e-9, maximum=1)
    batch_size: int = setting(8, "Windows per optimizer micro-batch.", minimum=1)
    optimizer: str = setting("adamw", "Optimizer.", choices=("adamw", "adam", "sgd"))
    lr: float = setting(3e-3, "Peak learning rate.", flag="--lr", minimum=0,
                        doc="tools/bench_baseline.py: one-cycle to 3e-3 beat a bare AdamW 1e-3 constant loop at "
                            "equal CPU budgets of 15-60 s on both images and at 120 s on the scene, and tied it "
                            "at 120 s on the nuclei; cosine 2e-3 lost on the scene.")
    lr_full_steps: int = setting(32, "Runs of fewer optimizer steps peak at lr * steps / lr_full_steps (at least "
                                     "lr / 3); 0 = always the full lr.", minimum=0,
                                 doc="16-step runs of the sample at the full 3e-3 scored lower than at 1.5e-3, "
                                     "32-step runs higher than at 2e-3 (tools/bench_short_runs.py, docs/study.md).")
    weight_decay: float = setting(1e-4, "AdamW/SGD weight decay.", minimum=0)
    scheduler: str = setting("onecycle", "Learning-rate schedule, stepped every optimizer step.",
                             choices=("cosine", "onecycle", "constant"),
                             doc="onecycle: measured by the same table (cosine 2e-3 with 5 warm-up steps tied on "
                                 "the nuclei and lost on the scene at every budget).")
    warmup_steps: int = setting(0, "Linear warm-up steps before the schedule (onecycle has its own 30% rise).",
                                minimum=0)
    min_lr_ratio: float = setting(0.0, "Cosine decays to min_lr_ratio * lr.", minimum=0, maximum=1)
    momentum: float = setting(0.9, "SGD momentum (Nesterov when > 0).", minimum=0)
    loss: list = setting(factory=_default_loss, help="Weighted sum of losses: dice, jaccard, focal, lovasz, "
                                                     "tversky, soft_bce, soft_ce, bce.")
    cls_loss: list = setting(factory=_default_cls_loss, help="Class head loss (cls; seg+cls adds it): ce, focal, "
                                                             "asymmetric, bce, soft_bce.",
                             doc="Options per entry: class_weights [..], label_smoothing, gamma, ... "
                                 "Label smoothing 0.1 on digits with 10 % flipped labels (docs/ablation.md, 3 "
                                 "seeds): macro F1 +0.018 +- 0.032, within noise; off in the shipped recipes.")
    mixup: Optional[dict] = setting(None, "cls: MixUp/CutMix by timm, e.g. {mixup_alpha: 0.2, cutmix_alpha: 1.0}.")
    amp: bool = setting(True, "Mixed precision where it helps: bf16 on GPUs that have it, else fp16; bf16 on CPUs "
                              "with native bf16.",
                        doc="float32 elsewhere: emulated bf16 (AVX2-only CPUs) is about 12x slower.")
    accumulate: int = setting(1, "Gradient accumulation steps.", minimum=1)
    clip: Optional[float] = setting(None, "Clip the gradient norm to this value; null = off.")
    ema: Optional[float] = setting(None, "EMA decay of the weights (e.g. 0.999); null = off.",
                                   doc="Warms up as min(ema, (1+n)/(10+n)) over the first n steps; BatchNorm "
                                       "statistics are the live model's. Decay 0.99 in docs/ablation.md's short "
                                       "runs: Dice -0.004 +- 0.001 (nuclei), -0.001 +- 0.004 (scene), digits macro "
                                       "F1 +0.005 +- 0.011: helped nowhere.")
    keep_last: int = setting(3, "Checkpoints kept besides the best one.", minimum=1)
    swa_epochs: int = setting(0, "Average the weights of the last K epochs into checkpoints/swa.pt; 0 = off.",
                              minimum=0, doc="BatchNorm is recomputed on 64 training windows; `--epochs swa` "
                                             "predicts with it. The last 2 of 4 epochs (docs/ablation.md): Dice "
                                             "+0.031 +- 0.014 (nuclei), -0.016 +- 0.012 (scene), digits macro F1 "
                                             "+0.086 +- 0.056 (higher on every seed, within noise).")
    early_stop: int = setting(0, "Stop after N epochs without a better validation score; 0 = off.", minimum=0)
    early_stop_delta: float = setting(0.0, "Better means beating the best validation score by more than this.",
                                      minimum=0)
    channels_last: bool = setting(True, "NHWC memory layout (faster convolutions on CPU and tensor cores).")
    sync_bn: bool = setting(False, "torchrun: BatchNorm statistics over every rank's batch (SyncBatchNorm; GPUs "
                                   "only).")
    target_weights: Optional[list] = setting(None, "data.targets: loss weight per target; null = 1 each.")
    finetune_size: Optional[int] = setting(
        None, "segkit auto: after this stage, fine-tune at this network size (same field of view, from the best "
              "checkpoint); null = one stage.", minimum=32,
        doc="Planned by `segkit plan` only when the small objects stay visible at the lower first-stage size "
            "and the budget holds enough epochs for both stages. `segkit train --config plan.yaml` trains the "
            "first stage; `segkit finetune -r RUN --size N` is the second.")
    finetune_epochs: Optional[int] = setting(None, "segkit auto: epochs of the fine-tune stage; null = epochs.",
                                             minimum=1)
    finetune_windows_per_epoch: Optional[int] = setting(
        None, "segkit auto: windows per epoch of the fine-tune stage; null = windows_per_epoch.", minimum=1)


@dataclass
class InferConfig:
    overlap_px: Optional[int] = setting(None, "Overlap of neighbouring tiles, source pixels; null = a quarter of "
                                              "the kept tile, at most 64.", flag="--overlap", minimum=0)
    blend: str = setting("gaussian", "Tile blend weights.", choices=("gaussian", "pyramid", "flat"))
    tta: str = setting("hflip", "Test-time views: none | hflip (original 0.6 + hflip 0.4) | flips | d4 | "
                                "view:weight,...", flag="--tta",
                       doc="hflip against none (docs/ablation.md, 3 seeds): Dice -0.001 +- 0.001 and object F1 "
                           "+0.000 on the nuclei, Dice +0.011 +- 0.007 and F1 +0.106 +- 0.051 on the scene, within "
                           "noise; `segkit auto` keeps a view only where the validation fold shows it helps.")
    epochs: str = setting("last:3", "Checkpoints averaged: last:K | best | all | 8,9,10 | swa.", flag="--epochs",
                          doc="last:3 against last:1 in 4-epoch runs (docs/ablation.md): Dice -0.022 +- 0.020 "
                              "(nuclei), -0.063 +- 0.039 (scene), digits macro F1 -0.143 +- 0.011; in runs that "
                              "short the last 3 include an epoch near the peak learning rate.")
    threshold: float = setting(0.5, "Probability threshold.", flag="--threshold", minimum=0, maximum=1)
    batch_size: Optional[int] = setting(None, "Tiles per forward pass; null = auto (CPU 8; CUDA 16, 32 with >= 16 "
                                              "GB).", flag="--batch-size", minimum=1)
    min_object_px: int = setting(0, "Remove predicted objects smaller than this many pixels.", minimum=0,
                                 doc="A tenth of the median object area (44 px nuclei, 54 px scene): object F1 "
                                     "+0.006 +- 0.006 (nuclei), +0.210 +- 0.062 (scene, outside noise), Dice "
                                     "unchanged (docs/ablation.md); `segkit auto` searches it on the validation fold.")
    fill_holes: bool = setting(False, "Fill holes inside predicted objects.")
    rle_order: str = setting("F", "--rle output: F column-major, 1-indexed (Kaggle HuBMAP) | C row-major.",
                             choices=("F", "C"))
    crf: Optional[dict] = setting(None, "Dense CRF parameters for --crf, e.g. {iterations: 5, sxy_bilateral: 80}.",
                                  doc="docs/ablation.md (3 seeds, short runs): the defaults (bilateral 80 px) gave "
                                      "Dice +0.032 +- 0.010 and object F1 +0.084 +- 0.015 on the nuclei, +0.035 / "
                                      "+0.090 on the scene (within noise); sxy_bilateral = one object diameter, "
                                      "sxy_gaussian 1, compat_bilateral 5: +0.041 / +0.120 (nuclei), +0.047 / +0.198 "
                                      "(scene).")
    use_crf: bool = setting(False, "Dense CRF on every infer of this run (as --crf does for one call); segkit "
                                   "auto sets it when it raised the validation score.")
    skip_background: bool = setting(False, "Skip tiles that are background on the thumbnail; their output is 0.",
                                    flag="--skip-background")
    tissue: str = setting("auto", "For skip_background: auto (the run's data.tissue, else saturation) | "
                                  "saturation | otsu.", choices=("auto", "saturation", "otsu"))
    margin_px: int = setting(0, "Context margin: predict each tile, keep its centre (fov_px - 2 x margin).",
                             flag="--margin", minimum=0)
    simplify: float = setting(0.0, "--polygons simplification tolerance in pixels, topology kept; 0 = pixel edges.",
                              flag="--simplify", minimum=0)
    min_polygon_area: int = setting(0, "--polygons: polygons with fewer pixels are not written.",
                                    flag="--min-polygon-area", minimum=0)
    geojson_crs: str = setting("raster", "--polygons coordinates: raster (its CRS, pixels without one) | pixel "
                                         "(QuPath) | wgs84 (RFC 7946 lon/lat).",
                               choices=("raster", "pixel", "wgs84"), flag="--geojson-crs")
    object_type: str = setting("auto", "--polygons QuPath objectType; auto: detection for runs with instance "
                                       "targets, else annotation.",
                               choices=("auto", "annotation", "detection"), flag="--object-type")
    overviews: bool = setting(True, "--mask/--probs TIFFs get internal overviews, so viewers open them fast.")
    mask_nodata: Optional[int] = setting(0, "Nodata value declared in --mask TIFFs (0: background transparent); "
                                            "null = none.", minimum=0, maximum=255)
    rle_header: str = setting("id,rle", "--rle column names, e.g. ImageId,EncodedPixels or id,predicted.",
                              flag="--rle-header")
    rle_empty: str = setting("", "--rle cell of an image without foreground.", choices=("", "-"),
                             flag="--rle-empty")
    cls_gate: Optional[float] = setting(None, "seg+cls: a tile whose 'empty' probability >= this is written as "
                                              "background (e.g. 0.9); null = off.")
    rle_per_object: bool = setting(False, "Instance runs: --rle writes one row per object (Data Science Bowl).",
                                   flag="--rle-per-object")
    seed_threshold: float = setting(0.7, "Instance runs: watershed seeds are body >= this (border, contact < "
                                         "seed_border).", minimum=0, maximum=1)
    seed_border: float = setting(0.5, "Instance runs: seeds need border and contact below this.",
                                 minimum=0, maximum=1)
    calibrate: bool = setting(False, "cls: temperature scaling fitted on the validation rows, kept in "
                                     "RUN/calibration.json.", flag="--calibrate")


@dataclass
class LabelConfig:
    regions: int = setting(8, "suggest: regions picked for annotation.", flag="--regions", minimum=1)
    region_px: int = setting(512, "suggest: side of a picked square region, source pixels.", flag="--region-size",
                             minimum=16)
    score: str = setting("both", "suggest: uncertainty score: entropy (of the ensemble mean) | disagreement (of "
                                    "views and checkpoints) | both.",
                         choices=("entropy", "disagreement", "both"), flag="--score")
    diverse: bool = setting(False, "suggest: spread picks in encoder-feature space (greedy k-centre over the "
                                   "best-scored candidates).", flag="--diverse")
    pool: int = setting(4, "suggest --diverse: candidates per pick the k-centre chooses from.", minimum=1)
    min_tissue: float = setting(0.5, "suggest: a region needs this share of usable (tissue) area.",
                                minimum=0, maximum=1)
    label_path: str = setting("labels/{id}.geojson", "suggest: label file each pick's manifest row points at "
                                                     "({id}: the image's stem), relative to the output folder.",
                              flag="--label-path")
    low: float = setting(0.1, "pseudo: probability at or below which a pixel is confident background.",
                         flag="--low", minimum=0, maximum=1)
    high: float = setting(0.9, "pseudo: probability at or above which a pixel is confident foreground.",
                          flag="--high", minimum=0, maximum=1)
    weight: float = setting(0.5, "pseudo: the manifest weight of pseudo-labelled rows (how often training draws "
                                 "their windows, relative to area).", flag="--weight", minimum=1e-6)


@dataclass
class Config:
    task: str = setting("seg", "seg: masks per pixel | cls: one class per image/tile | seg+cls: both.",
                        choices=TASKS, flag="--task")
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    infer: InferConfig = dataclasses.field(default_factory=InferConfig)
    label: LabelConfig = dataclasses.field(default_factory=LabelConfig)
    why: Optional[dict] = setting(None, "Plans written by segkit plan / auto: dotted key -> the rule and the figure "
                                        "that set it; a note for people, read by no stage.")


SECTIONS = ("run", "data", "model", "train", "infer", "label")


def iter_settings() -> Iterator[Setting]:
    """Every key, in the order of the sections and their fields ("task" first)."""
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if field.name not in SECTIONS:
            yield describe(field.name, field, hints[field.name])
            continue
        section = hints[field.name]
        section_hints = typing.get_type_hints(section)
        for inner in dataclasses.fields(section):
            yield describe(f"{field.name}.{inner.name}", inner, section_hints[inner.name])


def find_setting(key: str) -> Setting:
    """The :class:`Setting` of a dotted key (KeyError naming the nearest keys otherwise)."""
    for item in iter_settings():
        if item.key == key:
            return item
    import difflib

    close = difflib.get_close_matches(key, [s.key for s in iter_settings()], n=3)
    raise KeyError(f"unknown config key {key}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
