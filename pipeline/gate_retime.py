"""Same-run A/B for the CI gate: time the baseline's artifacts beside the candidate's, on this
machine, in interleaved rounds, so a different or busier CI machine cancels out.

A report row points to the artifact folder it measured (``artifact``) and its checksum
(``artifact_sha256``). When both rows' folders are here and still hold what was measured (the
manifest's checksums validate and match the row's), both are opened in this process and timed in
alternating blocks (A B, B A, A B, ...); each round's ratio (candidate over baseline) pairs two
timings taken a moment apart, so a busy second or a slower CPU moves both. The gate's latency
change is the median per-round ratio with a bootstrap interval over rounds
(``gate_stats.paired_ratio``). Rows whose artifacts are not here are listed with the reason,
and the gate compares their ratios to each run's reference instead.

Example:
    >>> from edgeopt.pipeline.gate_retime import locate
    >>> locate({"name": "fp32"}, "report.json") is None   # a row that names no artifact
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.result import Progress, reporter

from . import gate_stats
from .report_schema import OK, status

ROUNDS = 30
BLOCK_SECONDS = 0.02   # one block of runs: long enough for the timer, short enough to interleave
RETIMED_RUNTIMES = ("onnxruntime", "tvm", "torch")


@dataclass(frozen=True)
class ABTiming:
    """What the A/B re-timing gave: an interval per row key, and why other rows were not re-timed."""

    intervals: dict
    skipped: dict


def locate(entry: dict, report_path: str | os.PathLike) -> Path | None:
    """The artifact folder a report row measured: its ``artifact`` path as written (absolute, or
    relative to where the study ran), else the same ``variants/...`` tail under the report's
    folder (a study folder moved or unpacked elsewhere); None when it is not here."""
    recorded = entry.get("artifact")
    if not recorded:
        return None
    p = Path(recorded)
    candidates = [p]
    parts = p.parts
    if "variants" in parts:
        candidates.append(Path(report_path).resolve().parent / Path(*parts[parts.index("variants"):]))
    return next((c for c in candidates if (c / "manifest.json").is_file()), None)


def open_row(entry: dict, report_path, threads):
    """(runner, inputs) for a row's artifact, or a reason string when it cannot be re-timed."""
    from edgeopt.runtimes import load
    from edgeopt.runtimes.artifact import load_artifact

    from .measure import artifact_digest

    if entry.get("runtime") not in RETIMED_RUNTIMES:
        return f"runtime {entry.get('runtime')!r} is not re-timed here"
    folder = locate(entry, report_path)
    if folder is None:
        return f"artifact {entry.get('artifact')!r} is not here"
    try:
        art = load_artifact(folder)  # validates every file's checksum
    except (InputError, FileNotFoundError, ValueError) as e:
        return f"artifact {str(folder)!r} does not validate: {e}"
    if entry.get("artifact_sha256") != artifact_digest(art):
        return f"artifact {str(folder)!r} is not the one the report measured (checksum)"
    try:
        runner = load(art, runtime=entry["runtime"], threads=threads)
    except (InputError, FileNotFoundError, OSError) as e:
        return f"artifact {str(folder)!r} cannot be opened on {entry['runtime']}: {e}"
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal([d if isinstance(d, int) else 1 for d in spec.shape]).astype(spec.dtype)
              for spec in art.inputs]
    return runner, inputs


def retime(report: dict, baseline: dict, report_path, baseline_path, *, rounds: int = ROUNDS,
           threads: int | None = None, require_all: bool = False,
           progress: Progress = None) -> ABTiming:
    """Re-time every row both reports ran, baseline against candidate, in interleaved rounds.
    ``require_all``: ``InputError`` naming the first row that cannot be re-timed, before any timing."""
    log = reporter(progress)
    from .gate import keyed_rows

    new, old = keyed_rows(report, "report"), keyed_rows(baseline, "baseline")
    threads = threads or (baseline.get("machine") or {}).get("threads") or (report.get("machine") or {}).get("threads")
    pairs, skipped = {}, {}
    for key in [k for k in old if k in new]:
        if status(new[key]) != OK or status(old[key]) != OK:
            continue
        base = open_row(old[key], baseline_path, threads)
        cand = open_row(new[key], report_path, threads) if not isinstance(base, str) else None
        if isinstance(base, str) or isinstance(cand, str):
            skipped[key] = f"baseline's {base}" if isinstance(base, str) else f"report's {cand}"
            if require_all:
                raise InputError(f"{key} cannot be re-timed: {skipped[key]}; expected both reports' "
                                 "artifact folders here, as measured")
            continue
        pairs[key] = (base, cand)
    intervals = {}
    for key, (base, cand) in pairs.items():
        log(f"{key}: re-timing the baseline's artifact beside the candidate's ({rounds} rounds)")
        base_rounds, cand_rounds = interleaved(base, cand, rounds)
        intervals[key] = gate_stats.paired_ratio(cand_rounds, base_rounds)
    return ABTiming(intervals, skipped)


def interleaved(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """Median latency (ms) of a block of runs of ``a`` and of ``b`` in each of ``rounds`` rounds,
    the order alternating (A B, B A, ...) so neither always runs second."""
    (ra, xa), (rb, xb) = a, b
    probe = max(ra.benchmark(xa, warmup=5, repeat=10).latency.median_ms,
                rb.benchmark(xb, warmup=5, repeat=10).latency.median_ms)
    runs = int(min(500, max(3, BLOCK_SECONDS * 1e3 / max(probe, 1e-6))))
    out_a, out_b = [], []
    for i in range(rounds):
        pair = [(ra, xa, out_a), (rb, xb, out_b)]
        for runner, x, sink in (pair if i % 2 == 0 else pair[::-1]):
            sink.append(runner.benchmark(x, warmup=1, repeat=runs).latency.median_ms)
    return out_a, out_b
