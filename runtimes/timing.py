"""Latency statistics for repeated runs of one callable.

Example:
    >>> from edgeopt.runtimes.timing import measure
    >>> stats = measure(lambda: sum(range(100)), warmup=2, repeat=20)
    >>> stats.n, stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms, len(stats.rounds_ms)
    (20, True, 20)
    >>> percentile([5.0, 1.0, 2.0, 3.0, 4.0], 99), percentile([5.0, 1.0, 2.0, 3.0, 4.0], 50)
    (5.0, 3.0)
    >>> sorted(measure(lambda: None, warmup=0, repeat=100).to_report())
    ['interval', 'median', 'min', 'n', 'p90', 'rounds', 'stdev']
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from edgeopt.core.errors import InputError


# Timed runs are kept as this many rounds: the medians of consecutive blocks of runs. One median
# says nothing of how much a latency moves; the rounds are what a comparison's interval is
# built from (edgeopt.pipeline.gate_stats), at 20 numbers per row instead of every run.
ROUNDS = 20


@dataclass(frozen=True)
class TimingStats:
    """Latency of ``n`` timed runs, in milliseconds; ``rounds_ms``: the medians of ``ROUNDS``
    consecutive blocks of the runs, in the order they ran (empty when only a summary is known,
    as from the native runner); ``p99_ms``: None when only a summary without it is known.
    With 100 runs the nearest-rank p99 is the second slowest: the figure a stall under load
    (a thread descheduled at a barrier) shows up in, where the median hides it."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    stdev_ms: float
    n: int
    rounds_ms: tuple = ()
    p99_ms: float | None = None

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "TimingStats":
        if not samples_ms:
            raise InputError("no timing samples: expected repeat >= 1")
        s = sorted(samples_ms)
        return cls(
            median_ms=statistics.median(s),
            p90_ms=percentile(s, 90),
            min_ms=s[0],
            mean_ms=statistics.fmean(s),
            stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0,
            n=len(s),
            rounds_ms=tuple(round_medians(samples_ms)),
            p99_ms=percentile(s, 99),
        )

    def to_report(self) -> dict:
        """The ``latency_ms`` object of report.json: with rounds, ``rounds`` (their medians) and
        ``interval`` (p10 and p90 over rounds: how much this latency moves)."""
        out = {"median": self.median_ms, "p90": self.p90_ms, "min": self.min_ms,
               "stdev": self.stdev_ms, "n": self.n}
        if self.rounds_ms:
            out["rounds"] = [float(f"{r:.6g}") for r in self.rounds_ms]
            out["interval"] = list(round_spread(self.rounds_ms))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(samples_ms, q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``q``% of the samples at or
    below it (a sample that happened, never an interpolation between two runs)."""
    s = sorted(samples_ms)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def round_medians(samples_ms: list[float], rounds: int = ROUNDS) -> list[float]:
    """Timed runs, in the order they ran, as the medians of ``rounds`` consecutive blocks (as
    even as the count allows): a block median shrugs off a single preemption, and the spread
    between blocks is the noise a comparison sees."""
    k = min(rounds, len(samples_ms))
    if k == 0:
        return []
    bounds = [round(i * len(samples_ms) / k) for i in range(k + 1)]
    return [statistics.median(samples_ms[a:b]) for a, b in zip(bounds, bounds[1:])]


def round_spread(rounds_ms) -> tuple[float, float]:
    """p10 and p90 over round medians (linear interpolation, numpy's default)."""
    q = statistics.quantiles(rounds_ms, n=10, method="inclusive") if len(rounds_ms) > 1 else [rounds_ms[0]] * 9
    return q[0], q[-1]


def check_counts(warmup: int, repeat: int) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be an integer >= 0, got {warmup!r}")
    if not isinstance(repeat, int) or repeat < 1:
        raise InputError(f"repeat must be an integer >= 1, got {repeat!r}")


def measure(fn: Callable[[], object], warmup: int = 10, repeat: int = 100) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed one by one."""
    check_counts(warmup, repeat)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return TimingStats.from_samples(samples)
