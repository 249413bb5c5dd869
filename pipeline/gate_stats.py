"""The statistics behind the CI gate's decisions: paired tests on the test set, intervals on latency.

Quality (accuracy, or any labelled metric) is judged *paired*: both models answered the same
test samples, so what matters is where they differ, not their two means.

- Top-1: the per-sample outcomes (right / wrong) of both sides give the discordant counts
  ``worse`` (baseline right, candidate wrong) and ``better``. McNemar's exact test, in its
  mid-p form (Fagerland, Lydersen & Laake 2013: it keeps its level where the exact test is far
  too conservative for few discordant pairs), gives the one-sided p-value that the candidate is
  worse; the interval of the accuracy drop is a bootstrap over the samples (drawn as a
  multinomial of the discordant counts, which is the same thing and cheap).
- Other labelled metrics (mse, mae, cosine): a paired bootstrap of the per-sample errors.
- Latency: each side's timed runs are kept as rounds (``edgeopt.runtimes.timing``: the median
  of each block of runs); a
  bootstrap over rounds gives an interval of the ratio of two latencies (or of the ratio of two
  ratios, when each side is a ratio to its own run's reference).

Outcomes travel in report.json compactly: top-1 outcomes as a base64 bit string
(``pack_outcomes``), per-sample errors as base64 float32 (``pack_values``).

Example:
    >>> import numpy as np
    >>> from edgeopt.pipeline.gate_stats import mcnemar, pack_outcomes, unpack_outcomes
    >>> old = np.ones(360, bool); new = old.copy(); new[:4] = False
    >>> c = mcnemar(old, new)
    >>> (c.worse, c.better, round(c.drop, 4), c.p_worse < 0.05)
    (4, 0, 0.0111, True)
    >>> bool((unpack_outcomes(pack_outcomes(new), 360) == new).all())
    True
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from edgeopt.core.errors import InputError

CONFIDENCE = 0.90        # two-sided intervals; their ends are one-sided 95 % bounds
BOOTSTRAP = 4000         # resamples: the ends of a 90 % interval move by well under 1 % of its width


def pack_outcomes(correct) -> str:
    """A boolean vector (one entry per test sample) as base64 of its bits: 45 bytes for 360."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_outcomes(text: str, n: int) -> np.ndarray:
    """The inverse of ``pack_outcomes`` for ``n`` samples."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (ValueError, TypeError):
        raise InputError("per-sample outcomes are not base64; expected pack_outcomes' output") from None
    if len(raw) * 8 < n:
        raise InputError(f"per-sample outcomes hold {len(raw) * 8} bits for {n} samples")
    return np.unpackbits(raw)[:n].astype(bool)


def pack_values(values) -> str:
    """Per-sample float values (errors, similarities) as base64 of little-endian float32."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def unpack_values(text: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float64)
    except (ValueError, TypeError):
        raise InputError("per-sample values are not base64 float32; expected pack_values' output") from None


@dataclass(frozen=True)
class PairedAccuracy:
    """The paired change of top-1 accuracy from a baseline to a candidate on the same samples."""

    n: int
    worse: int           # samples the baseline got right and the candidate wrong
    better: int          # the other way round
    drop: float          # (worse - better) / n: the fall of accuracy, in fraction points
    low: float           # CONFIDENCE interval of the drop
    high: float
    p_worse: float       # McNemar mid-p, one-sided: chance of this many or more 'worse' if equal


def mcnemar(old_correct, new_correct, confidence: float = CONFIDENCE, seed: int = 0) -> PairedAccuracy:
    """Paired comparison of two models' per-sample outcomes (see the module docstring)."""
    from scipy.stats import binom

    a, b = np.asarray(old_correct, bool), np.asarray(new_correct, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise InputError(f"paired outcomes must be two equal, non-empty vectors; got {a.shape} and {b.shape}")
    n = len(a)
    worse, better = int(np.sum(a & ~b)), int(np.sum(~a & b))
    m = worse + better
    if m == 0:
        return PairedAccuracy(n, 0, 0, 0.0, 0.0, 0.0, 1.0)
    p = float(binom.sf(worse, m, 0.5) + 0.5 * binom.pmf(worse, m, 0.5))
    draws = np.random.default_rng(seed).multinomial(n, [worse / n, better / n, 1 - m / n], size=BOOTSTRAP)
    drops = (draws[:, 0] - draws[:, 1]) / n
    lo, hi = np.quantile(drops, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedAccuracy(n, worse, better, (worse - better) / n, float(lo), float(hi), p)


@dataclass(frozen=True)
class PairedChange:
    """The paired change of a per-sample metric's mean (new minus old) and its interval."""

    n: int
    change: float
    low: float
    high: float


def paired_bootstrap(old_values, new_values, confidence: float = CONFIDENCE, seed: int = 0) -> PairedChange:
    """Interval of ``mean(new) - mean(old)`` over the same samples, by resampling the samples."""
    a, b = np.asarray(old_values, np.float64), np.asarray(new_values, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise InputError(f"paired values must be two equal, non-empty vectors; got {a.shape} and {b.shape}")
    d = b - a
    idx = np.random.default_rng(seed).integers(0, len(d), size=(BOOTSTRAP, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedChange(len(d), float(d.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class RatioInterval:
    """A latency change as a ratio (1.15 = 15 % slower) with its interval."""

    ratio: float
    low: float
    high: float
    method: str


def _boot_medians(rounds, rng) -> np.ndarray:
    r = np.asarray(rounds, np.float64)
    return np.median(r[rng.integers(0, len(r), size=(BOOTSTRAP, len(r)))], axis=1)


def ratio_of_ratios(new_var, new_ref, old_var, old_ref, confidence: float = CONFIDENCE,
                    seed: int = 0) -> RatioInterval:
    """``(new_var / new_ref) / (old_var / old_ref)`` from four sets of rounds, each side a ratio to
    its own run's reference; the interval resamples the rounds of each of the four independently.
    ``new_ref``/``old_ref`` may be None (then plain ``new_var / old_var``)."""
    rng = np.random.default_rng(seed)
    point = float(np.median(new_var) / np.median(old_var))
    boot = _boot_medians(new_var, rng) / _boot_medians(old_var, rng)
    method = "bootstrap over rounds"
    if new_ref is not None and old_ref is not None:
        point *= float(np.median(old_ref) / np.median(new_ref))
        boot *= _boot_medians(old_ref, rng) / _boot_medians(new_ref, rng)
        method = "bootstrap over rounds, ratio to each run's reference"
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return RatioInterval(point, float(lo), float(hi), method)


def paired_ratio(candidate_rounds, baseline_rounds, confidence: float = CONFIDENCE,
                 seed: int = 0) -> RatioInterval:
    """Candidate over baseline timed in the same rounds (interleaved A/B): the median of the
    per-round ratios, with a bootstrap interval over rounds (pairing cancels what a round shares:
    a busy moment, a frequency change)."""
    c, b = np.asarray(candidate_rounds, np.float64), np.asarray(baseline_rounds, np.float64)
    if c.shape != b.shape or not len(c):
        raise InputError(f"A/B rounds must pair up; got {c.shape} and {b.shape}")
    ratios = c / b
    boot = _boot_medians(ratios, np.random.default_rng(seed))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return RatioInterval(float(np.median(ratios)), float(lo), float(hi), "same-run A/B, bootstrap over rounds")
