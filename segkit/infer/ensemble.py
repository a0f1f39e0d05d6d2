"""Which checkpoints make an ensemble, and with what weights.

Epoch ensembles: the predictions of several checkpoints of one run (e.g. the last 3 epochs)
averaged by predict_strips; run ensembles: several runs, each with its own weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from segkit.ground.errors import SegkitError


def _available(paths_by_epoch: Mapping[int, Path]) -> str:
    return ", ".join(str(e) for e in sorted(paths_by_epoch)) or "none"


def select_checkpoints(paths_by_epoch: Mapping[int, Path], spec: str | int = "last:1",
                       best_epoch: int | None = None) -> list[Path]:
    """Checkpoint paths for `spec`, in epoch order.

    spec: "last" / "last:K" (the K latest epochs), "8,9,10" (those epochs), "8-10" (a range),
    "best" (best_epoch), "all". Asking for an epoch that was not saved is a SegkitError that
    lists the available epochs.
    """
    if not paths_by_epoch:
        raise SegkitError("checkpoints: the run has no checkpoints")
    epochs = sorted(int(e) for e in paths_by_epoch)
    text = str(spec).strip().replace(" ", "")
    if text == "all":
        chosen = epochs
    elif text == "best":
        if best_epoch is None:
            raise SegkitError("--epochs best: the run records no best epoch (no validation score); "
                              f"available epochs: {_available(paths_by_epoch)}")
        chosen = [int(best_epoch)]
    elif text == "last" or text.startswith("last:"):
        count = text.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise SegkitError(f"--epochs {spec}: expected last:K with K >= 1")
        # A run shorter than K epochs (or pruned to fewer) ensembles what it has.
        chosen = epochs[-int(count):]
    else:
        chosen = []
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            try:
                chosen += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
            except ValueError:
                raise SegkitError(f"--epochs {spec}: expected last:K, best, all, a list like 8,9,10 "
                                  "or a range like 8-10") from None
        chosen = sorted(set(chosen))
    missing = [e for e in chosen if e not in paths_by_epoch]
    if missing:
        raise SegkitError(f"--epochs {spec}: no checkpoint for epoch {', '.join(map(str, missing))}; "
                          f"available epochs: {_available(paths_by_epoch)}")
    return [Path(paths_by_epoch[e]) for e in chosen]


def normalise_weights(weights: Sequence[float] | None, count: int, what: str = "ensemble") -> list[float]:
    """count weights summing to 1 (equal when weights is None)."""
    if count <= 0:
        raise SegkitError(f"{what}: nothing to ensemble")
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise SegkitError(f"{what}: {len(weights)} weights for {count} members")
    total = sum(weights)
    if any(w < 0 for w in weights) or total <= 0:
        raise SegkitError(f"{what}: weights must be >= 0 and sum to a positive number, got {weights}")
    return [w / total for w in weights]


def combine_runs(runs: Sequence[Sequence[tuple[object, float]]],
                 run_weights: Sequence[float] | None = None) -> list[tuple[object, float]]:
    """One (model, weight) list from several runs' (model, weight) lists.

    Each run's members share that run's weight in proportion to their own weights, so a run
    with 3 checkpoints counts as much as a run with 1.
    """
    shares = normalise_weights(run_weights, len(runs), "runs")
    out = []
    for members, share in zip(runs, shares):
        weights = normalise_weights([w for _, w in members], len(members), "run members")
        out += [(m, share * w) for (m, _), w in zip(members, weights)]
    return out
