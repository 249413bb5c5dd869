"""Fidelity of a compressed model's outputs against the fp32 model's on the same inputs.

Example:
    >>> import numpy as np
    >>> from edgeopt.compress.fidelity import fidelity
    >>> ref = np.array([[2.0, 1.0], [0.0, 3.0]])
    >>> f = fidelity(ref, ref + 0.01)
    >>> f.agreement, round(f.max_abs, 3), f.sqnr_db > 40
    (1.0, 0.01, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.core.errors import InputError


@dataclass(frozen=True)
class Fidelity:
    """Top-1 agreement, signal-to-quantization-noise ratio (dB) and max abs error."""

    agreement: float
    sqnr_db: float
    max_abs: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity(reference: np.ndarray, test: np.ndarray) -> Fidelity:
    """Compare logits ``test`` with ``reference`` (both (N, classes), or (N, ...) arrays).

    SQNR is ``10 log10(sum(ref^2) / sum((ref - test)^2))``: infinite when identical.
    """
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(test, dtype=np.float64)
    if ref.shape != got.shape:
        raise InputError(f"outputs to compare have different shapes: {ref.shape} and {got.shape}")
    if ref.size == 0:
        raise InputError("no outputs to compare: expected at least one sample")
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    sqnr = math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-300) / noise)
    flat_ref = ref.reshape(len(ref), -1)
    flat_got = got.reshape(len(got), -1)
    agreement = float(np.mean(flat_ref.argmax(axis=1) == flat_got.argmax(axis=1)))
    return Fidelity(agreement=agreement, sqnr_db=sqnr, max_abs=float(np.max(np.abs(ref - got))),
                    n=len(ref))


def runner_outputs(runner, x: np.ndarray) -> np.ndarray:
    """First output of ``runner`` over the samples of ``x``, one batch-1 call per sample when the
    model's batch axis is fixed at 1, else one call."""
    batch = runner.inputs[0].shape[0]
    if batch == 1 and len(x) != 1:
        return np.concatenate([runner.run(x[i:i + 1])[0] for i in range(len(x))])
    return runner.run(x)[0]


def runner_all_outputs(runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output of ``runner`` over the samples of ``x`` (one array per output, in the
    model's order), one batch-1 call per sample when the model's batch axis is fixed at 1."""
    batch = runner.inputs[0].shape[0]
    if batch == 1 and len(x) != 1:
        runs = [runner.run(x[i:i + 1]) for i in range(len(x))]
        return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]
    return [np.asarray(o) for o in runner.run(x)]


def compare_outputs(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """``mse`` / ``mae`` (mean error) or ``cosine`` (mean cosine similarity, per sample) of two
    batches of outputs with as many values each, every sample flattened: a regression task's
    metric against its targets, or a variant's outputs against fp32's."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    if metric == "mse":
        return float(np.mean((a - b) ** 2))
    if metric == "mae":
        return float(np.mean(np.abs(a - b)))
    # Zero vectors have no direction: treat two of them as identical, one of them as orthogonal.
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-30))
    return float(np.mean(np.clip(cos, -1.0, 1.0)))
