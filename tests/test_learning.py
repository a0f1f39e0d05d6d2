"""Training checked by its effect: a tiny seeded project learns, and a finetune starts from its parent.

The other trained-run tests check that a run directory is well formed (`0 <= val_dice <= 1`);
these check results a user would see. Removing the parent-weight load of a finetune
(segkit/train/fit.py `_build`) makes test_finetune_starts_from_the_parents_weights fail.
"""

import json
import re

import torch
from click.testing import CliRunner

from conftest import stop_training_at_epoch
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
    output = run("finetune", "--from", learned, "--size", 48, "--epochs", 1, "--name", "child",
                 "--set", "model.freeze_fraction=1.0", "--runs-dir", learned.parent).output
    assert re.search(r"^epoch 1: loss \d\.\d{4}  val dice \d\.\d{4}  \(\d+(\.\d+)? s\)$", output, re.M), output
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


def test_a_finetune_stopped_before_its_first_checkpoint_resumes_from_its_parent(learned, monkeypatch):
    """Ctrl-C in the child's first epoch leaves no checkpoint: `train --resume` must start again
    from the parent's weights (run.json keeps the parent), not from a fresh network."""
    restore = stop_training_at_epoch(monkeypatch, 1)
    stopped = CliRunner().invoke(cli, ["finetune", "--from", str(learned), "--size", "48", "--epochs", "1", "--name",
                                       "early", "--set", "model.freeze_fraction=1.0", "--runs-dir", str(learned.parent)])
    child = learned.parent / "early"
    assert stopped.exit_code == 130 and not list((child / "checkpoints").glob("*.pt"))
    assert json.loads((child / "run.json").read_text())["status"] == "interrupted"
    restore()
    run("train", "--resume", child)
    parent_best = json.loads((learned / "run.json").read_text())["best_epoch"]
    parent_weights, child_weights = checkpoint(learned, parent_best), checkpoint(child, 1)
    encoder = [k for k in parent_weights if k.startswith("encoder.") and k.endswith(".weight")]
    assert encoder and all(torch.equal(parent_weights[k], child_weights[k]) for k in encoder)


def test_a_run_without_validation_rows_trains_and_names_its_last_epoch(learned):
    """Training on every row (the validation fold is empty): a warning, no scores, the last epoch
    stands in for the best, and the last line says there was nothing to validate."""
    result = run("train", "--config", learned.parent.parent / "tiny.yaml", "--name", "all_rows", "--set",
                 "data.val_fold=3", "--set", "train.epochs=1", "--runs-dir", learned.parent)
    child = learned.parent / "all_rows"
    assert "validation fold 3 has no rows" in result.output
    assert "\nhardware: device cpu, precision " in result.output  # the stage says what it chose
    assert "final loss" in result.output.splitlines()[-1] and "  (no validation rows)  (" in result.output.splitlines()[-1]
    assert [set(r) & {"val_dice"} for r in records(child)] == [set()]
    assert json.loads((child / "run.json").read_text())["best_epoch"] == 1
