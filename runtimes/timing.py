"""Latency statistics for repeated runs of one callable.

Example:
    >>> from edgeopt.runtimes.timing import measure
    >>> stats = measure(lambda: sum(range(100)), warmup=2, repeat=20)
    >>> stats.n, stats.min_ms <= stats.median_ms <= stats.p90_ms
    (20, True)
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from edgeopt.core.errors import InputError


@dataclass(frozen=True)
class TimingStats:
    """Latency of ``n`` timed runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    stdev_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> "TimingStats":
        if not samples_ms:
            raise InputError("no timing samples: expected repeat >= 1")
        s = sorted(samples_ms)
        # Nearest-rank percentile: the value below which 90% of the samples fall.
        p90 = s[min(len(s) - 1, max(0, math.ceil(0.9 * len(s)) - 1))]
        return cls(
            median_ms=statistics.median(s),
            p90_ms=p90,
            min_ms=s[0],
            mean_ms=statistics.fmean(s),
            stdev_ms=statistics.stdev(s) if len(s) > 1 else 0.0,
            n=len(s),
        )

    def to_report(self) -> dict:
        """The ``latency_ms`` object of report.json."""
        return {"median": self.median_ms, "p90": self.p90_ms, "min": self.min_ms,
                "stdev": self.stdev_ms, "n": self.n}

    def to_dict(self) -> dict:
        return asdict(self)


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
