"""Training checked by its effect: a tiny seeded project learns, and a finetune starts from its parent.

The other trained-run tests check that a run directory is well formed (`0 <= val_dice <= 1`);
these check results a user would see. Removing the parent-weight load of a finetune
(segkit/train/fit.py `_build`) makes test_finetune_starts_from_the_parents_weights fail.
"""

import json

import torch
from click.testing import CliRunner

from segkit.cli import cli

# The foreground share of the tiny project's validation image is about 0.1: a constant "all
# foreground" mask scores Dice ~0.2, a random one less. 5 epochs of 8 windows reach ~0.8 here.
CHANCE_DICE = 0.2
FLOOR_DICE = 0.5


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run_dir, epoch):
    return torch.load(run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt", weights_only=True)["model"]


def test_a_tiny_seeded_project_learns_well_above_chance(learned):
    rows = records(learned)
    dice = [r["val_dice"] for r in rows]
    assert dice[0] < CHANCE_DICE < FLOOR_DICE <= max(dice), dice  # it starts near nothing and learns
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for key in ("seconds", "cpu_seconds"):  # what benchmarks read, in hundredths
        assert all(0 < r[key] == round(r[key], 2) for r in rows), key
    info = json.loads((learned / "run.json").read_text())
    assert info["best_epoch"] == 1 + dice.index(max(dice))  # the selector picks the best validated epoch


def test_finetune_starts_from_the_parents_weights(learned):
    """The progressive step (same field of view, larger network size) with the encoder frozen: the
    child's encoder is the parent's, bit for bit, its first epoch's loss is the parent's late loss,
    not a fresh model's, and its first validation already scores what the parent learned."""
    parent_best = json.loads((learned / "run.json").read_text())["best_epoch"]
    run("finetune", "--from", learned, "--size", 48, "--epochs", 1, "--name", "child",
        "--set", "model.freeze_fraction=1.0", "--runs-dir", learned.parent)
    child = learned.parent / "child"
    parent_weights, child_weights = checkpoint(learned, parent_best), checkpoint(child, 1)
    encoder = [k for k in parent_weights if k.startswith("encoder.") and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    assert encoder and all(torch.equal(parent_weights[k], child_weights[k]) for k in encoder)
    decoder = [k for k in parent_weights if k.startswith("decoder.") and k.endswith(".weight")]
    assert any(not torch.equal(parent_weights[k], child_weights[k]) for k in decoder)  # the rest trained on

    parent_rows, (first,) = records(learned), records(child)
    assert first["train_loss"] < (parent_rows[0]["train_loss"] + parent_rows[-1]["train_loss"]) / 2
    assert first["val_dice"] > FLOOR_DICE * 0.8 > CHANCE_DICE  # a fresh model scores ~0.02 after one epoch
