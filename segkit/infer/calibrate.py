"""Temperature scaling of classifier outputs: Guo et al. 2017, "On Calibration of Modern Neural
Networks", ICML. One scalar T divides every logit before the softmax; T is fitted on validation
rows by minimising the negative log-likelihood, which leaves the argmax (the labels) unchanged
and makes the probabilities honest. With an ensemble (checkpoints x TTA views) T applies to
every member's logits before their probabilities are averaged, exactly as inference does.

T is found by golden-section search over log T in [1/20, 20]: one bounded dimension, a few
dozen evaluations, no optimiser state to tune.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_json

CALIBRATION_FILE = "calibration.json"
_LOG_T_RANGE = (math.log(1 / 20), math.log(20))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def ensemble_probs(logits: np.ndarray, weights: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """sum_m w_m softmax(logits_m / T): logits (members, rows, classes), weights summing to 1."""
    logits = np.asarray(logits, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1)
    return (w * _softmax(logits / float(temperature))).sum(axis=0)


def nll(probs: np.ndarray, targets: Sequence[int]) -> float:
    """Mean negative log-likelihood of the targets (probabilities clipped at 1e-12)."""
    targets = np.asarray(targets, dtype=np.int64)
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, weights: Sequence[float], targets: Sequence[int], iterations: int = 60) -> float:
    """The T > 0 minimising the NLL of ensemble_probs(logits, weights, T) on ``targets``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2:
        logits = logits[None]
    if logits.shape[1] != len(targets) or len(targets) == 0:
        raise SegkitError(f"calibration: {logits.shape[1]} predictions for {len(targets)} validation rows")

    def loss(log_t: float) -> float:
        return nll(ensemble_probs(logits, weights, math.exp(log_t)), targets)

    lo, hi = _LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(int(iterations)):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def save_calibration(run_dir: Path, record: dict) -> Path:
    """Write RUN/calibration.json atomically (replacing an earlier fit)."""
    return write_json(Path(run_dir) / CALIBRATION_FILE, record)


def load_calibration(run_dir: Path) -> Optional[dict]:
    """RUN/calibration.json, or None when the run was never calibrated."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegkitError(f"{path}: cannot read the calibration ({exc})") from None
    return record
