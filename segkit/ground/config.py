"""Configuration: one dataclass per section, loaded from YAML plus ``--set`` overrides.

Every key has a default here; ``segkit/configs/default.yaml`` documents them all (``segkit
config`` prints it). Unknown keys and values of the wrong type are one-line errors that name
the key (and the nearest valid key), raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from segkit.ground.errors import SegkitError
from segkit.ground.targets import check_target_keys

TASKS = ("seg", "cls", "seg+cls")
# Recipes shipped in the wheel: `--config sample` is segkit/configs/sample.yaml.
RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RunConfig:
    name: Optional[str] = None  # run directory name; default "<command>-<timestamp>"
    runs_dir: str = "runs"  # parent folder of all run directories
    seed: int = 42  # seeds windows, augmentation, weights and folds
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # progress bars on long work
    log: str = "none"  # extra epoch logging: none | tensorboard | mlflow (--log; needs that package)
    tracking_uri: Optional[str] = None  # MLflow tracking URI; null = sqlite:///<runs_dir>/mlflow.db
    experiment: str = "segkit"  # MLflow experiment the runs are logged under


@dataclass
class DataConfig:
    manifest: str = "sample"  # dataset CSV, a folder with images/ + masks/, or "sample" (bundled nuclei)
    fov_px: Optional[int] = None  # source pixels a window covers; default: size of the first stage
    size: int = 256  # pixels the network sees (--size); windows are resampled fov_px -> size
    folds: int = 5  # folds made when the manifest has no fold column
    fold_method: str = "random"  # random | stratified | group
    val_fold: int = 0  # the validation fold (--fold)
    foreground_share: float = 0.33  # share of windows centred on labelled objects
    tissue: str = "none"  # usable-area detection on a thumbnail: none | saturation | otsu
    pad_mode: str = "constant"  # padding of windows past the border: constant | reflect
    rle_order: str = "F"  # RLE labels: F column-major (Kaggle HuBMAP) | C row-major
    class_map: Optional[dict] = None  # label value or polygon property -> class id
    class_property: Optional[str] = None  # polygon property holding the class
    channels: Optional[list] = None  # multi-contrast channel spec; null = one channel per band
    normalize: bool = True  # per-channel mean/std computed on training windows
    stats_windows: int = 64  # windows sampled for the normalization statistics
    mean: Optional[list] = None  # per-channel mean; given with std, skips computing them
    std: Optional[list] = None  # per-channel std (e.g. from `segkit stats`)
    augment: Optional[dict] = None  # albumentations serialized pipeline (A.to_dict form)
    copy_paste: Optional[dict] = None  # object copy-paste settings; null = off
    workers: int = 0  # DataLoader worker processes
    class_names: Optional[list] = None  # names by class id (seg: background first; cls: the image classes, null = from the manifest)
    group_pattern: Optional[str] = None  # regex over the image stem giving rows without a group their group
    crop_scale: Optional[list] = None  # cls: [min, max] share of the image area cropped at random, then resized; null = whole image
    class_balanced: bool = False  # cls: draw every class equally often (off: with noisy labels it fits the noise)
    cls_from_mask: int = 1  # seg+cls: a tile with >= this many foreground source px is class "object", else "empty"
    targets: Optional[object] = None  # [body, border, contact] or "instances": instance targets; null = class masks
    border_px: int = 2  # targets: border band inside each object, source px
    contact_px: int = 2  # targets: pixels within this distance of two objects are contact, source px


@dataclass
class ModelConfig:
    arch: str = "Unet"  # any segmentation_models_pytorch architecture
    encoder: str = "resnet18"  # encoder name as smp knows it
    encoder_weights: Optional[str] = None  # null, imagenet (needs internet once) or a local weights file (.pth, .safetensors)
    classes: int = 1  # 1 = binary (sigmoid); N > 1 = multiclass (softmax)
    freeze_fraction: float = 0.0  # share of encoder parameter tensors frozen


@dataclass
class TrainConfig:
    epochs: int = 10  # epochs of this stage
    windows_per_epoch: int = 512  # random windows drawn per epoch (seg); a cls epoch is one pass over the rows
    subset: float = 1.0  # fraction of windows_per_epoch actually used (fast experiments)
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-3
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"  # cosine (with warmup) | onecycle | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine ends at min_lr_ratio * lr
    momentum: float = 0.9  # SGD momentum (Nesterov when > 0)
    loss: list = field(default_factory=lambda: [{"name": "dice", "weight": 1.0}, {"name": "soft_bce", "weight": 1.0}])
    cls_loss: list = field(default_factory=lambda: [{"name": "ce", "weight": 1.0}])  # class head (cls, seg+cls)
    mixup: Optional[dict] = None  # cls: timm Mixup options, e.g. {mixup_alpha: 0.2, cutmix_alpha: 1.0}; null = off
    amp: bool = True  # mixed precision where it helps: fp16 + GradScaler on CUDA, bf16 on CPUs with native bf16
    accumulate: int = 1  # gradient accumulation steps
    clip: Optional[float] = None  # gradient-norm clipping
    ema: Optional[float] = None  # EMA decay of weights (e.g. 0.999); null = off
    keep_last: int = 3  # checkpoints kept besides the best
    swa_epochs: int = 0  # average the weights of the last K epochs into checkpoints/swa.pt; 0 = off
    early_stop: int = 0  # stop after N epochs without improvement; 0 = off
    early_stop_delta: float = 0.0  # an epoch counts as better only when it beats the best by more than this
    channels_last: bool = True
    target_weights: Optional[list] = None  # data.targets: loss weight per target; null = 1 each


@dataclass
class InferConfig:
    overlap_px: int = 64  # overlap of neighbouring tiles in source pixels
    blend: str = "gaussian"  # gaussian | pyramid | flat
    tta: str = "hflip"  # none | hflip | flips | d4 | "identity:0.6,hflip:0.4"
    epochs: str = "last:3"  # checkpoints averaged: last:K | best | all | 8,9,10
    threshold: float = 0.5
    batch_size: int = 8
    min_object_px: int = 0  # remove predicted objects smaller than this
    fill_holes: bool = False
    rle_order: str = "F"  # F column-major 1-indexed (Kaggle HuBMAP) | C row-major
    crf: Optional[dict] = None  # dense CRF parameters used with --crf
    skip_background: bool = False  # tiles that are background on the thumbnail are not run; output 0 (--skip-background)
    tissue: str = "auto"  # for skip_background: auto (data.tissue, else saturation) | saturation | otsu
    margin_px: int = 0  # context margin: each tile is predicted, only its centre (fov - 2 x margin) is kept (--margin)
    simplify: float = 0.0  # --polygons: simplification tolerance in pixels (topology kept); 0 = exact pixel edges
    min_polygon_area: int = 0  # --polygons: polygons with fewer pixels are not written
    geojson_crs: str = "raster"  # --polygons coordinates: raster (its CRS, else pixels) | pixel (QuPath) | wgs84 (RFC 7946)
    object_type: str = "auto"  # --polygons QuPath objectType: auto (detection with data.targets) | annotation | detection
    overviews: bool = True  # --mask/--probs TIFFs get internal overviews (fast in QGIS and QuPath)
    mask_nodata: Optional[int] = 0  # nodata value declared in --mask TIFFs (0: background transparent); null = none
    rle_header: str = "id,rle"  # --rle column names, e.g. "ImageId,EncodedPixels" or "id,predicted"
    rle_empty: str = ""  # --rle cell of an image without foreground: "" (empty) | "-"
    cls_gate: Optional[float] = None  # seg+cls: a tile whose "empty" probability >= this is written as background
    rle_per_object: bool = False  # instance runs: --rle writes one row per object (DSB format)
    seed_threshold: float = 0.7  # instance runs: watershed seeds = body >= this, border and contact < seed_border
    seed_border: float = 0.5
    calibrate: bool = False  # cls: temperature scaling fitted on the validation rows, saved with the run (--calibrate)


@dataclass
class Config:
    task: str = "seg"  # seg | cls | seg+cls
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    why: Optional[dict] = None  # plans (segkit plan / auto): dotted key -> the rule and figure that set it; read by no stage


def _suggest(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"


def _check_type(dotted: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a SegkitError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    base = origin or annotation
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. infer.epochs=7 or run.name=2024: YAML reads them as numbers
    if base is float and isinstance(value, str):
        # PyYAML reads 3e-4 (no dot) as a string; accept any spelling float() accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if base is int and isinstance(value, bool):
        raise SegkitError(f"config key {dotted}: expected int, got {value!r}")
    if not isinstance(value, base):
        raise SegkitError(f"config key {dotted}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(instance: Any, updates: dict, prefix: str = "") -> Any:
    if not isinstance(updates, dict):
        raise SegkitError(f"config section {prefix.rstrip('.') or '(top)'}: expected a mapping, got {updates!r}")
    fields = {f.name: f for f in dataclasses.fields(instance)}
    hints = typing.get_type_hints(type(instance))
    changes = {}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise SegkitError(f"unknown config key {dotted}{_suggest(str(key), list(fields), prefix)}")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, prefix=f"{dotted}.")
        else:
            changes[key] = _check_type(dotted, value, hints[key])
    return dataclasses.replace(instance, **changes)


def parse_override(text: str) -> dict:
    """``section.key=value`` -> nested dict; the value is parsed as YAML (numbers, null, lists)."""
    if "=" not in text:
        raise SegkitError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise SegkitError(f"--set {dotted}: value {raw!r} is not valid YAML ({exc.problem})") from None
    nested: dict = value
    for part in reversed(dotted.strip().split(".")):
        nested = {part: nested}
    return nested


def recipe_names() -> list[str]:
    """The config recipes shipped inside the package (segkit/configs/NAME.yaml)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_config(spec: str | Path) -> Path:
    """A config file path, or the bare name of a shipped recipe (``sample``, ``default``, ...)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name in recipe_names():
        return RECIPES_DIR / f"{name}.yaml"
    raise SegkitError(f"{spec}: cannot read config (no such file; recipes shipped with segkit: "
                      f"{', '.join(recipe_names())})")


def read_config_file(spec: str | Path) -> dict:
    """The YAML mapping of a config file or recipe (``find_config``), unchecked."""
    path = find_config(spec)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise SegkitError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SegkitError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise SegkitError(f"{path}: expected a mapping of sections (run:, data:, ...), got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), base: Config | None = None) -> Config:
    """Defaults (or ``base``) <- YAML file or recipe name <- ``--set`` overrides, each checked."""
    config = base or Config()
    if path is not None:
        loaded = read_config_file(path)
        path = find_config(path)
        try:
            config = _merge(config, loaded)
        except SegkitError as exc:
            raise SegkitError(f"{path}: {exc}") from None
    for text in overrides:
        config = _merge(config, parse_override(text))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks across keys that types alone cannot express."""
    choices = {
        "task": (config.task, TASKS),
        "data.fold_method": (config.data.fold_method, ("random", "stratified", "group")),
        "data.tissue": (config.data.tissue, ("none", "saturation", "otsu")),
        "data.pad_mode": (config.data.pad_mode, ("constant", "reflect")),
        "data.rle_order": (config.data.rle_order, ("F", "C")),
        "infer.rle_order": (config.infer.rle_order, ("F", "C")),
        "infer.blend": (config.infer.blend, ("gaussian", "pyramid", "flat")),
        "infer.tissue": (config.infer.tissue, ("auto", "saturation", "otsu")),
        "run.log": (config.run.log, ("none", "tensorboard", "mlflow")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise SegkitError(f"config key {key}: {value!r} is not one of {', '.join(valid)}")
    positive = {
        "data.size": config.data.size,
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.windows_per_epoch": config.train.windows_per_epoch,
        "model.classes": config.model.classes,
    }
    for key, value in positive.items():
        if value < 1:
            raise SegkitError(f"config key {key}: must be >= 1, got {value}")
    if config.data.fov_px is not None and config.data.fov_px < 1:
        raise SegkitError(f"config key data.fov_px: must be >= 1, got {config.data.fov_px}")
    if (config.data.mean is None) != (config.data.std is None):
        raise SegkitError("config keys data.mean and data.std: give both or neither")
    if config.data.std is not None and any(not isinstance(v, (int, float)) or v <= 0 for v in config.data.std):
        raise SegkitError(f"config key data.std: every value must be a number > 0, got {config.data.std}")
    if not config.run.experiment.strip():
        raise SegkitError("config key run.experiment: must name an MLflow experiment, got an empty string")
    if config.train.swa_epochs < 0:
        raise SegkitError(f"config key train.swa_epochs: must be >= 0, got {config.train.swa_epochs}")
    if not 0 < config.train.subset <= 1:
        raise SegkitError(f"config key train.subset: must be in (0, 1], got {config.train.subset}")
    if not 0 <= config.data.foreground_share <= 1:
        raise SegkitError(f"config key data.foreground_share: must be in [0, 1], got {config.data.foreground_share}")
    if config.why is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in config.why.items()):
        raise SegkitError("config key why: expected a mapping of dotted key -> reason (text)")
    _validate_outputs(config.infer)
    _validate_tiling(config)
    _validate_names(config)


def _validate_tiling(config: Config) -> None:
    """Threshold and tile geometry: values that would give empty masks or no tile at all. (An overlap of
    more than half a tile is used as half a tile, with a warning: infer/predict.py.)"""
    i = config.infer
    if not 0 <= i.threshold <= 1:
        raise SegkitError(f"config key infer.threshold: a probability must be in [0, 1], got {i.threshold}")
    if i.batch_size < 1:
        raise SegkitError(f"config key infer.batch_size: must be >= 1, got {i.batch_size}")
    if i.overlap_px < 0 or i.margin_px < 0:
        raise SegkitError("config keys infer.overlap_px and infer.margin_px: must be >= 0, got "
                          f"{i.overlap_px} and {i.margin_px}")
    if config.task == "cls":
        return  # a classifier sees whole images or rows; it predicts no tile grid
    fov_px = config.data.fov_px or config.data.size
    core = fov_px - 2 * i.margin_px  # the part of each tile that is kept
    if core < 1:
        raise SegkitError(f"config key infer.margin_px: {i.margin_px} leaves nothing of a {fov_px} px tile "
                          f"(must be < {(fov_px + 1) // 2})")


def _validate_outputs(infer: "InferConfig") -> None:
    choices = {
        "infer.geojson_crs": (infer.geojson_crs, ("raster", "pixel", "wgs84")),
        "infer.object_type": (infer.object_type, ("auto", "annotation", "detection")),
        "infer.rle_empty": (infer.rle_empty, ("", "-")),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise SegkitError(f"config key {key}: {value!r} is not one of {', '.join(map(repr, valid))}")
    names = [name.strip() for name in infer.rle_header.split(",")]
    if len(names) != 2 or not all(names):
        raise SegkitError(f"config key infer.rle_header: expected two column names like 'id,rle', got {infer.rle_header!r}")
    if infer.simplify < 0 or infer.min_polygon_area < 0:
        raise SegkitError("config keys infer.simplify and infer.min_polygon_area: must be >= 0")
    if infer.mask_nodata is not None and not 0 <= infer.mask_nodata <= 255:
        raise SegkitError(f"config key infer.mask_nodata: must be 0..255 or null, got {infer.mask_nodata}")


def _validate_names(config: "Config") -> None:
    data = config.data
    if data.group_pattern is not None:
        try:
            re.compile(data.group_pattern)
        except re.error as exc:
            raise SegkitError(f"config key data.group_pattern: not a regular expression ({exc})") from None
        if data.fold_method != "group":
            raise SegkitError(f"config key data.group_pattern: used by data.fold_method=group only "
                              f"(it is {data.fold_method!r}); set both")
    names = data.class_names
    if names is not None:
        if not all(isinstance(n, (str, int)) and str(n) for n in names):
            raise SegkitError(f"config key data.class_names: expected a list of names, got {names!r}")
        expected = max(2, config.model.classes)
        if config.task == "seg" and len(names) != expected:
            raise SegkitError(f"config key data.class_names: {len(names)} names for {expected} mask values "
                              f"(background first, then one per class)")
    _validate_cls(config)
    _validate_targets(config)


def _validate_targets(config: Config) -> None:
    check_target_keys(config.data.targets, border_px=config.data.border_px, contact_px=config.data.contact_px,
                      task=config.task, copy_paste=bool(config.data.copy_paste),
                      target_weights=config.train.target_weights)
    if not 0 <= config.infer.seed_border <= 1 or not 0 <= config.infer.seed_threshold <= 1:
        raise SegkitError("config keys infer.seed_threshold and infer.seed_border: must be in [0, 1]")


def _validate_cls(config: Config) -> None:
    """The classification keys (cls and seg+cls)."""
    names, crop = config.data.class_names, config.data.crop_scale
    if names is not None and (not names or any(not isinstance(n, (str, int)) or isinstance(n, bool) for n in names)):
        raise SegkitError(f"config key data.class_names: expected a list of names, got {names!r}")
    if crop is not None and (len(crop) != 2 or not all(isinstance(v, (int, float)) for v in crop)
                             or not 0 < crop[0] <= crop[1] <= 1):
        raise SegkitError(f"config key data.crop_scale: expected [min, max] with 0 < min <= max <= 1, got {crop!r}")
    if config.data.cls_from_mask < 0:
        raise SegkitError(f"config key data.cls_from_mask: must be >= 0, got {config.data.cls_from_mask}")
    gate = config.infer.cls_gate
    if gate is not None and not 0 < gate <= 1:
        raise SegkitError(f"config key infer.cls_gate: must be in (0, 1] (or null = off), got {gate}")
    if config.train.mixup is not None and config.task != "cls":
        raise SegkitError("config key train.mixup: MixUp/CutMix mixes whole-image labels; only for task cls")


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def flatten_config(tree: dict) -> dict:
    """{"train": {"lr": 1e-3}, "task": "seg"} -> {"train.lr": 1e-3, "task": "seg"}: sections are one level
    deep, so mappings inside a section (data.augment, data.copy_paste) stay values."""
    out = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            out[section] = values
    return out
