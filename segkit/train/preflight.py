"""A training stage's names and parent weights, checked before anything is written.

A training stage creates its run directory only after this passes, so an unknown loss,
optimizer or scheduler name, or a parent checkpoint that does not load into the model, is a
one-line error that leaves the runs folder as it was (an empty run left behind would otherwise
become the default run of `infer` and `finetune`). Building the loss and loading the parent's
weights here costs a fraction of a second; loading them again afterwards keeps fit() simple.
"""

from __future__ import annotations

from pathlib import Path

from segkit.ground.config import Config
from segkit.ground.errors import SegkitError
from segkit.runs import checkpoint as ckpt
from segkit.train import from_config as fc
from segkit.train.stage import load_model_weights


def check_names(config: Config) -> None:
    """The loss terms name losses segkit has (no data needed); optimizer and scheduler names are
    the settings' choices, checked when the config loads."""
    try:
        fc.task_loss(config)
    except SegkitError as exc:
        key = {"seg": "train.loss", "cls": "train.cls_loss"}.get(config.task, "train.loss/train.cls_loss")
        raise SegkitError(f"config key {key}: {exc}") from None


def check_parent_weights(model, path: Path) -> None:
    """The parent checkpoint a finetune starts from (``path``), loaded into this stage's ``model`` once as a check."""
    state = ckpt.load_checkpoint(path, required_keys=("model",))["model"]
    load_model_weights(model, state, path)


# what exact resume reads from the last checkpoint (fit._restore)
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch")


def check_resume_checkpoint(run_dir: Path) -> None:
    """The last checkpoint of a run to resume loads (a truncated one fails before the run is touched)."""
    existing = ckpt.list_checkpoints(run_dir / "checkpoints")
    if existing:
        ckpt.load_checkpoint(existing[-1], required_keys=RESUME_KEYS)
