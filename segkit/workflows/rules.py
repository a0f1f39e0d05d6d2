"""Plan rules: small pure functions of the data fingerprint (segkit.data.fingerprint), each testable alone.

Every rule returns ``{dotted config key: (value, why)}``; the why names the rule and the figure
behind it, so a planned number can be traced to the data (nnU-Net's experiment planner does the
same from its dataset fingerprint; Isensee et al., "nnU-Net", Nature Methods 2021). The budget
rules (segkit.workflows.budget) use a measured throughput besides the fingerprint.
"""

from __future__ import annotations

import math

Decisions = dict  # {dotted key: (value, why)}

TARGET_OBJECT_PX = 16  # network pixels the small objects (25th percentile diameter) should span at least
CONTEXT = 4  # a window holds CONTEXT x the large objects' (95th percentile) diameter
MAX_DOWNSCALE = 4
SIZE_RANGE = (64, 512)  # network sizes planned (multiples of 32)
TOUCHING_SHARE = 0.10  # object labels with at least this share of touching objects get instance targets
MIN_OBJECTS = 20  # fewer objects than this: too few to learn borders and contacts from
RARE_FOREGROUND = 0.01  # foreground share below this: focal loss instead of BCE, more object-centred windows


def _round32(value: float) -> int:
    return int(32 * math.ceil(value / 32))


def scale_rule(fp: dict) -> Decisions:
    """data.fov_px and data.size: the pixel scale and the field of view.

    downscale = the largest power of two (<= 4) that still shows the small objects (25th percentile
    equivalent diameter) over TARGET_OBJECT_PX network pixels; size = CONTEXT x the large objects'
    (95th percentile) diameter at that scale, rounded up to 32 and kept in 64..512; fov = size x
    downscale, at most the typical training image side (windows larger than the images are padding).
    Powers of two make a dataset resampled by 2 get a downscale and field of view twice as large at
    the same network size.
    """
    labels = fp.get("labels") or {}
    small, large = (labels.get("diameter_px") or {}).get("p25"), (labels.get("diameter_px") or {}).get("p95")
    side = int((fp.get("image_side_px") or {}).get("p50") or SIZE_RANGE[1])
    if not small:
        size = max(SIZE_RANGE[0], min(SIZE_RANGE[1] // 2, 32 * (side // 32)))
        why = f"no measured objects; {size} px at full resolution (median training image side {side} px)"
        return {"data.fov_px": (size, why), "data.size": (size, why)}
    downscale = 1
    while downscale * 2 <= MAX_DOWNSCALE and small / (downscale * 2) >= TARGET_OBJECT_PX:
        downscale *= 2
    size = min(SIZE_RANGE[1], max(SIZE_RANGE[0], _round32(CONTEXT * large / downscale)))
    fov = size * downscale
    cap = max(SIZE_RANGE[0] * downscale, 32 * downscale * (side // (32 * downscale)))
    capped = fov > cap
    if capped:
        fov, size = cap, cap // downscale
    scale_why = (f"downscale {downscale}: small objects (25th pct diameter {small:g} px) span "
                 f"{small / downscale:.0f} network px (>= {TARGET_OBJECT_PX} wanted)")
    fov_why = (f"{CONTEXT} x the large objects' diameter ({large:g} px, 95th pct) = {CONTEXT * large:.0f} px, "
               f"rounded to 32 at downscale {downscale}" + (f"; capped at the median image side {side} px"
                                                            if capped else ""))
    return {"data.fov_px": (fov, fov_why), "data.size": (size, scale_why)}


def low_stage_size(fp: dict, fov_px: int, size: int) -> tuple[int | None, str]:
    """The network size of a low-resolution first stage (same field of view), or None with the reason.

    Progressive resizing (train small, fine-tune at full size; Howard and Gugger, fastai 2020) only
    pays when the objects stay visible at the lower size: at half the planned size the small objects
    (25th percentile diameter) must still span TARGET_OBJECT_PX network pixels. On aerial buildings
    that did not (a low-resolution first stage gave half the object F1 of one full-resolution stage,
    mean of three seeds), so a plan that already shows the small objects near that size keeps one stage.
    """
    small = ((fp.get("labels") or {}).get("diameter_px") or {}).get("p25")
    low = 32 * ((size // 2) // 32)
    if not small:
        return None, "no measured objects: one stage"
    if low < SIZE_RANGE[0]:
        return None, f"one stage: half of {size} px is below the smallest planned size {SIZE_RANGE[0]}"
    shown = small * low / fov_px
    if shown < TARGET_OBJECT_PX:
        return None, (f"one stage: at {low} px the small objects would span {shown:.0f} network px "
                      f"(< {TARGET_OBJECT_PX})")
    return low, (f"the small objects (25th pct diameter {small:g} px) still span {shown:.0f} network px at {low} px "
                 f"(>= {TARGET_OBJECT_PX}): a {low} px first stage, then a fine-tune at {size} px")


def channel_rule(fp: dict) -> Decisions:
    """data.channels and data.normalize from the dtype, bit depth and measured ranges.

    8-bit data: one channel per band scaled by the dtype's range, then mean/std normalized. Wider
    integers and floats: each band windowed to its measured 1st-99th percentile over the sampled
    training windows (fixed numbers, so every image and inference use the same window).
    """
    dtype, bits = fp["majority"]["dtype"], fp["bits"]
    if dtype == "uint8":
        return {"data.channels": (None, "uint8 data: one channel per band, scaled by the dtype's range"),
                "data.normalize": (True, "per-channel mean/std over sampled training windows")}
    ranges = fp["range"]
    channels = [{"band": b, "window": [float(lo), float(hi) if hi > lo else float(lo) + 1]}
                for b, (lo, hi) in enumerate(ranges)]
    shown = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in ranges[:4])
    return {"data.channels": (channels, f"{dtype} using {bits} bits: each band windowed to its 1st-99th "
                                        f"percentile over the sampled windows ({shown})"),
            "data.normalize": (True, "per-channel mean/std after the windows")}


def foreground_rule(fp: dict) -> Decisions:
    """data.foreground_share and train.loss from the labelled foreground share."""
    share = fp["labels"]["foreground_share"]
    if share < RARE_FOREGROUND:
        return {"data.foreground_share": (0.5, f"foreground is {share:.2%} of the labelled pixels (rare): half the "
                                               "windows centred on objects"),
                "train.loss": ([{"name": "dice", "weight": 1.0}, {"name": "focal", "weight": 1.0}],
                               f"foreground {share:.2%} < {RARE_FOREGROUND:.0%}: dice + focal (BCE drowns in background)")}
    return {"data.foreground_share": (0.33, f"foreground is {share:.1%} of the labelled pixels: a third of the "
                                            "windows centred on objects (nnU-Net's oversampling)"),
            "train.loss": ([{"name": "dice", "weight": 1.0}, {"name": "soft_bce", "weight": 1.0}],
                           f"foreground {share:.1%} >= {RARE_FOREGROUND:.0%}: dice + BCE (nnU-Net's loss)")}


def target_rule(fp: dict, task: str = "seg") -> Decisions:
    """data.targets: instances when the labels hold objects and enough of them touch (task seg)."""
    labels = fp["labels"]
    if task != "seg":
        return {"data.targets": (None, f"task {task}: instance targets are for task seg")}
    kind, share, count = labels["object_labels"], labels["touching_share"], labels["objects"]
    if kind != "instances":
        return {"data.targets": (None, "the labels are class masks (touching objects are one region): plain masks")}
    if count < MIN_OBJECTS:
        return {"data.targets": (None, f"only {count} objects (< {MIN_OBJECTS}): plain masks")}
    if share < TOUCHING_SHARE:
        return {"data.targets": (None, f"{share:.0%} of the {count} objects touch another (< {TOUCHING_SHARE:.0%}): "
                                       "plain masks (border/contact targets lose objects that rarely touch)")}
    return {"data.targets": ("instances", f"{share:.0%} of the {count} objects touch another (>= "
                                          f"{TOUCHING_SHARE:.0%}): body/border/contact targets split them")}


def min_object_rule(fp: dict) -> Decisions:
    """infer.min_object_px: predicted objects smaller than half the small training objects are noise."""
    area = (fp["labels"].get("area_px") or {}).get("p5")
    if not area:
        return {"infer.min_object_px": (0, "no measured objects: nothing removed")}
    value = int(area // 2)
    return {"infer.min_object_px": (value, f"half the 5th-percentile training object area ({area:g} px)")}


def tissue_rule(fp: dict) -> Decisions:
    """data.tissue: RGB 8-bit images with mostly empty (nodata) area sample windows on the usable part."""
    usable = min(im["usable_share"] for im in fp["images"])
    if usable < 0.7:
        return {"data.tissue": ("otsu", f"an image is only {usable:.0%} usable (nodata): windows drawn on the rest")}
    return {"data.tissue": ("none", f"every sampled image is >= {usable:.0%} usable: windows drawn anywhere")}


def optimizer_rule(task: str) -> Decisions:
    """train.lr and train.scheduler: the measured defaults."""
    why = ("one-cycle to 3e-3 beat a constant AdamW 1e-3 loop at equal CPU budgets "
           "(tools/bench_baseline.py, README 'Against a bare loop')")
    if task == "cls":
        return {"train.lr": (0.003, "cls: the digits recipe's rate (segkit/configs/digits.yaml)"),
                "train.scheduler": ("onecycle", why)}
    return {"train.lr": (0.003, why), "train.scheduler": ("onecycle", why)}


def cls_rule(fp: dict) -> Decisions:
    """--task cls: input size from the image sizes, sampler and loss from the class balance."""
    side = int((fp.get("image_side_px") or {}).get("p50") or 224)
    size = min(SIZE_RANGE[1], max(32, _round32(side)))
    counts = fp.get("classes") or {}
    ratio = max(counts.values()) / max(1, min(counts.values())) if counts else 1.0
    out = {"data.size": (size, f"median image side {side} px, rounded up to 32"),
           "data.fov_px": (None, "cls: the whole image (or region) resized to size"),
           "infer.calibrate": (True, "temperature scaling on the validation rows (probabilities that mean what they say)")}
    if side <= 64:
        out["model.encoder"] = ("tu-resnet10t", f"{side} px images: a timm ResNet-10, 2.5x cheaper than resnet18 at "
                                                "32 px (segkit/configs/digits.yaml)")
        out["train.amp"] = (False, f"{side} px convolutions: float32 (bf16 autocast was ~5x slower on CPUs without "
                                   "native bf16, configs/digits.yaml)")
    if ratio >= 3:
        out["data.class_balanced"] = (True, f"largest/smallest class = {ratio:.1f} (>= 3): classes drawn equally")
        out["train.cls_loss"] = ([{"name": "focal", "weight": 1.0}], f"imbalance {ratio:.1f}: focal loss")
    else:
        out["data.class_balanced"] = (False, f"largest/smallest class = {ratio:.1f} (< 3): rows drawn as they are")
        out["train.cls_loss"] = ([{"name": "ce", "weight": 1.0}],
                                 f"balanced classes ({ratio:.1f}): cross-entropy (label smoothing 0.1 was within "
                                 "noise of it on the digits, docs/ablation.md)")
    return out
