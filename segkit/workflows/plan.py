"""`segkit plan`: a fingerprint of the training fold and a throughput probe -> a config with reasons.

    plan = make_plan(config, budget_s=600, overrides=["train.lr=1e-3"])
    plan.write("plan.yaml")          # an ordinary config (load_config reads it) + why: {key: reason}
    print(plan.table())

The fingerprint is taken on the training rows only (the validation fold is left for the
empirical stage of `segkit auto`). The plan is a pure function of the fingerprint, the
throughput (cached per machine, see segkit.workflows.budget) and the budget, so two calls on
the same data give the same file. A key given with ``--set`` wins over the planned value and
the plan says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from segkit.data.fingerprint import fingerprint, header_check
from segkit.ground.config import Config, flatten_config, load_config, parse_override, to_dict
from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_text
from segkit.workflows import rules
from segkit.workflows.budget import (MIN_STAGE_EPOCHS, Throughput, budget_rule, format_budget, probe_throughput,
                                     stages_rule)

FLIPS_AUGMENT = {"transform": {"__class_fullname__": "Compose", "transforms": [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "VerticalFlip", "p": 0.5},
    {"__class_fullname__": "RandomRotate90", "p": 0.5}]}}


@dataclass
class Plan:
    config: Config  # the planned config (checked by load_config)
    why: dict  # dotted key -> reason
    fingerprint: dict
    throughput: Throughput | None
    budget_s: float | None

    def tree(self) -> dict:
        """The plan file's mapping: the config's sections plus why."""
        tree = to_dict(self.config)
        tree["why"] = dict(self.why)
        return tree

    def write(self, path: str | Path) -> Path:
        text = "# segkit plan: an ordinary config (segkit train --config plan.yaml) with a reason per planned key\n"
        write_text(Path(path), text + yaml.safe_dump(self.tree(), sort_keys=False, width=110))
        return Path(path)

    def table(self) -> str:
        flat = flatten_config({k: v for k, v in to_dict(self.config).items()})
        lines = []
        for key, why in self.why.items():
            value = flat.get(key)
            shown = _dump(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            lines.append(f"  {key:<26} {shown:<40} {why}")
        return "\n".join(lines)


def _user_keys(overrides: list[str]) -> dict:
    return flatten_config(_nested_merge({}, [parse_override(text) for text in overrides]))


def _nested_merge(base: dict, parts: list[dict]) -> dict:
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "why":
                base[key] = _nested_merge(dict(base[key]), [value])
            else:
                base[key] = value
    return base


def _apply(config: Config, decisions: dict, why: dict, user: dict) -> Config:
    """Planned keys into ``config`` (through load_config: every value checked); a key the user set
    with --set keeps the user's value, and the why says what the plan would have chosen."""
    texts = []
    for key, (value, reason) in decisions.items():
        if key in user:
            why[key] = f"set by --set (the plan: {_dump(value)[:30]}: {reason})"
            continue
        why[key] = reason
        texts.append(f"{key}={_dump(value)}")
    return load_config(None, texts, base=config)


def check_data(fp: dict, manifest: str) -> None:
    """Refuse what no plan can train: no labelled pixels (seg), a single class (cls)."""
    if fp["task"] == "cls":
        if len(fp.get("classes") or {}) < 2:
            raise SegkitError(f"{manifest}: the training rows hold {len(fp.get('classes') or {})} class(es); "
                              "a classifier needs at least 2")
        return
    labels = fp["labels"]
    if not labels["labelled_rows"] or labels["foreground_share"] <= 0:
        raise SegkitError(f"{manifest}: no labelled pixels in the {fp['sampled_rows']} training rows sampled "
                          "(every label is empty or missing); nothing to plan from")


def weights_rule(config: Config) -> dict:
    """model.encoder_weights: a local file named there, imagenet when cached, random otherwise."""
    named = config.model.encoder_weights
    if named and Path(str(named)).expanduser().is_file():
        return {"model.encoder_weights": (str(named), "a local weights file (offline sites): loaded into the encoder")}
    if imagenet_cached(config.model.encoder):
        return {"model.encoder_weights": ("imagenet", f"imagenet weights of {config.model.encoder} are cached")}
    return {"model.encoder_weights": (None, f"imagenet weights of {config.model.encoder} are not cached here "
                                            "(offline): random init; --set model.encoder_weights=imagenet fetches "
                                            "them once, or name a local weights file")}


def imagenet_cached(encoder: str) -> bool:
    """True when smp's imagenet weights of ``encoder`` are in the Hugging Face cache (no network asked)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from segmentation_models_pytorch.encoders import encoders
    except ImportError:
        return False
    settings = (encoders.get(encoder) or {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        return False
    found = try_to_load_from_cache(settings["repo_id"], "model.safetensors", revision=settings.get("revision"))
    return isinstance(found, str)


def data_rules(config: Config, fp: dict) -> dict:
    """Every rule that reads the fingerprint alone, in the order the plan prints them."""
    decisions = {**rules.channel_rule(fp), **rules.tissue_rule(fp)}
    if config.task == "cls":
        return {**decisions, **rules.cls_rule(fp), **rules.optimizer_rule("cls"),
                "data.augment": (config.data.augment, "cls: no flips planned (they change digits, text, ...)"),
                "infer.tta": ("none", "cls: flips can change a class"), "infer.epochs": ("best", "cls: the best epoch")}
    decisions.update(rules.scale_rule(fp))
    fov = decisions["data.fov_px"][0]
    decisions["infer.overlap_px"] = (fov // 4, f"a quarter of the {fov} px field of view: tile seams blended away")
    decisions.update({**rules.foreground_rule(fp), **rules.target_rule(fp, config.task)})
    decisions.update(rules.min_object_rule(fp))
    decisions.update(rules.optimizer_rule(config.task))
    decisions["data.augment"] = (FLIPS_AUGMENT, "flips and 90-degree turns (objects seen from above have no up)")
    decisions["infer.tta"] = ("none", "training validates one view; `auto` keeps a TTA view only if it helps there")
    decisions["infer.epochs"] = ("last:3", "average of the last 3 checkpoints; `auto` compares it with best and last")
    return decisions


def batch_rule(config: Config, device: str) -> dict:
    size = config.data.size
    if device.startswith("cuda"):
        return {"train.batch_size": (16, "a GPU: 16 windows a step")}
    if config.task == "cls":
        return {"train.batch_size": (32, f"CPU, {size} px images: 32 a step")}
    batch = 8 if size <= 256 else 4
    return {"train.batch_size": (batch, f"CPU at {size} px: {batch} windows a step")}


def make_plan(config: Config, *, budget_s: float | None, overrides: list[str] = (),
              probe: Callable[[Config], Throughput] = probe_throughput) -> Plan:
    """The plan of ``config``'s data (see module doc); ``budget_s`` None skips the probe and budget keys."""
    from segkit.runs.device import pick_device
    from segkit.train.from_config import label_options, split_rows

    user = _user_keys(list(overrides))
    train_rows, val_rows = split_rows(config)
    options = label_options(config)
    header_check(train_rows + val_rows)
    fp = fingerprint(train_rows, options, task=config.task, seed=config.run.seed)
    check_data(fp, str(config.data.manifest))
    why: dict = {}
    config = _apply(config, {**data_rules(config, fp), **weights_rule(config)}, why, user)
    config = _apply(config, batch_rule(config, str(pick_device(config.run.device))), why, user)
    config = load_config(None, [f"{k}={_dump(v)}" for k, v in user.items()], base=config)
    throughput = None
    if budget_s is not None:
        throughput = probe(config)
        rows = len(train_rows) if config.task == "cls" else None
        config = _apply(config, budget_rule(throughput, budget_s, rows=rows), why, user)
    config = _apply(config, stage_decisions(config, fp, user, throughput, budget_s, probe), why, user)
    config = load_config(None, [f"{k}={_dump(v)}" for k, v in user.items()], base=config)
    config = dataclasses.replace(config, why=dict(why))
    return Plan(config, why, fp, throughput, budget_s)


def stage_decisions(config: Config, fp: dict, user: dict, full: Throughput | None, budget_s: float | None,
                    probe: Callable[[Config], Throughput]) -> dict:
    """A low-resolution first stage plus a fine-tune, when the objects allow it (rules.low_stage_size)
    and the budget holds both (budget.stages_rule, from a second probe at the low size); else one stage.
    The low stage keeps the full size's batch, so the two probes and the plan's arithmetic agree."""
    if config.task == "cls":
        return {}
    if user.keys() & {"data.size", "data.fov_px", "train.finetune_size"}:
        return {}
    low, why = rules.low_stage_size(fp, config.data.fov_px or config.data.size, config.data.size)
    if low is None:
        return {"train.finetune_size": (None, why)}
    if full is None:  # no budget: the rule alone, epochs as given
        return {"data.size": (low, why), "train.finetune_size": (config.data.size, "the planned full size")}
    staged = stages_rule(probe(load_config(None, [f"data.size={low}"], base=config)), full, budget_s)
    if staged is None:
        return {"train.finetune_size": (None, f"one stage: {format_budget(budget_s)} does not hold "
                                              f"{MIN_STAGE_EPOCHS} epochs of each stage ({why})")}
    return {"data.size": (low, why), **staged}


def _dump(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def summary_line(plan: Plan) -> str:
    c = plan.config
    budget = f", budget {format_budget(plan.budget_s)}" if plan.budget_s else ""
    if c.task == "cls":
        return f"plan: {c.task}, {c.data.size} px images, {c.train.epochs} epochs{budget}"
    stage2 = (f", then fine-tune at {c.train.finetune_size} px for {c.train.finetune_epochs or c.train.epochs} "
              f"epochs" if c.train.finetune_size else "")
    return (f"plan: {c.task}, fov {c.data.fov_px} px -> size {c.data.size} px, {c.train.epochs} epochs x "
            f"{c.train.windows_per_epoch} windows{stage2}, targets {c.data.targets or 'masks'}{budget}")
