"""Does the CI gate cry wolf, does it sleep? (issue 29)

A baseline run of benchmarks/ci.yaml without load, then RUNS runs of the unchanged study under a
one-core background load (one busy Python loop, bounded by `timeout`, killed after each run),
each gated against the baseline with `edgeopt check` (same-run A/B: the baseline's artifacts
re-timed beside the run's, under the same load). Then, on each loaded run's artifacts, the
detections: a candidate 15 % slower (the candidate's runner spins 15 % of its own median after
every call: the same model, a known slowdown; the baseline side goes through the same wrapper
with no spin), a variant 1.1 points less accurate and one 0.28 points less accurate (one test
sample; 0.1 point is less than one of the 360 digits test samples) made by editing the int8
row's per-sample outcomes.

    .venv/bin/python benchmarks/gate_false_alarms.py --out /tmp/gate/alarms [--runs 10] [--record]

Prints one line per run and a summary table (markdown) at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EDGEOPT = str(Path(sys.executable).with_name("edgeopt"))
RECIPE = str(REPO / "benchmarks" / "ci.yaml")


def busy_core(seconds: int) -> subprocess.Popen:
    """One core kept busy, for at most ``seconds`` (the caller kills it sooner). The loop bounds
    itself: killing a `timeout` wrapper leaves its child running (a first version of this script
    left one busy loop behind per run)."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def study(out: Path) -> dict:
    if not (out / "report.json").exists():
        r = subprocess.run([EDGEOPT, "run", RECIPE, "--out", str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"study failed: {r.stderr[-2000:]}")
    return json.loads((out / "report.json").read_text())


def check(report: Path, baseline: Path) -> tuple[int, str]:
    r = subprocess.run([EDGEOPT, "check", str(report), "--baseline", str(baseline)], capture_output=True, text=True)
    return r.returncode, r.stdout


class Spun:
    """A runner whose every call is followed by ``extra_ms`` of busy waiting (0: untouched)."""

    def __init__(self, runner, extra_ms: float):
        self.runner, self.extra_ms = runner, extra_ms

    def benchmark(self, x, warmup: int = 1, repeat: int = 1):
        from types import SimpleNamespace

        from edgeopt.runtimes.timing import measure

        def call():
            self.runner.run(x)
            end = time.perf_counter() + self.extra_ms / 1e3
            while time.perf_counter() < end:
                pass

        return SimpleNamespace(latency=measure(call, warmup=warmup, repeat=repeat))


def slower_caught(report_path: Path, base_path: Path, slowdown: float) -> list[bool]:
    """Re-time every row (baseline against the same row's artifact slowed by ``slowdown``) and
    ask the gate; one flag per row."""
    from edgeopt.pipeline import gate_retime, gate_stats
    from edgeopt.pipeline.gate import Thresholds, compare, keyed_rows

    report, base = json.loads(report_path.read_text()), json.loads(base_path.read_text())
    new, old = keyed_rows(report, "report"), keyed_rows(base, "baseline")
    intervals = {}
    for key in old:
        b = gate_retime.open_row(old[key], base_path, 1)
        c = gate_retime.open_row(new[key], report_path, 1)
        probe = Spun(c[0], 0).benchmark(c[1], warmup=20, repeat=200).latency.median_ms
        ra, rb = gate_retime.interleaved((Spun(b[0], 0), b[1]), (Spun(c[0], slowdown * probe), c[1]),
                                         gate_retime.ROUNDS)
        intervals[key] = gate_stats.paired_ratio(rb, ra)
    rows = compare(report, base, Thresholds(), ab=intervals)
    return [("latency" in r["regressions"], r["latency"], r["latency_interval"]) for r in rows]


def less_accurate(report: dict, samples: int) -> dict:
    """The report with ``samples`` of the int8 row's right answers turned wrong."""
    from edgeopt.pipeline import gate_stats

    out = copy.deepcopy(report)
    row = next(v for v in out["variants"] if v["name"] == "int8")
    right = gate_stats.unpack_outcomes(row["outcomes"], row["samples"])
    right[np.flatnonzero(right)[:samples]] = False
    row["outcomes"] = gate_stats.pack_outcomes(right)
    row["accuracy"] = float(right.mean())
    return out


def main() -> int:
    from edgeopt.pipeline.gate import Thresholds, compare

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--record", action="store_true", help="write the table into its section of RESULTS.md")
    args = ap.parse_args()
    base_dir = args.out / "base"
    study(base_dir)
    base_path = base_dir / "report.json"
    results = []
    for i in range(args.runs):
        run_dir = args.out / f"run-{i}"
        load = busy_core(1800)
        try:
            t0 = time.time()
            report = study(run_dir)
            code, text = check(run_dir / "report.json", base_path)
            slow = slower_caught(run_dir / "report.json", base_path, 0.15)
        finally:
            load.kill()
            load.wait()
        base = json.loads(base_path.read_text())
        acc = {}
        for name, k in (("1.1pt", 4), ("0.28pt", 1)):
            rows = compare(less_accurate(report, k), base, Thresholds(), force=False)
            acc[name] = any("accuracy" in r["regressions"] for r in rows)
        ab = [line for line in text.splitlines() if "/onnxruntime/" in line]
        results.append({"run": i, "exit": code, "slow": slow, "acc": acc, "rows": ab, "s": time.time() - t0})
        print(f"run {i}: unchanged exit {code}; 15% slower caught {sum(s[0] for s in slow)}/{len(slow)} rows "
              f"({', '.join(f'{s[1] * 100:+.1f}% [{s[2][0] * 100:+.1f}, {s[2][1] * 100:+.1f}]' for s in slow)}); "
              f"-1.1pt caught {acc['1.1pt']}, -0.28pt flagged {acc['0.28pt']}", flush=True)
        for line in ab:
            print("    " + line, flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    n = len(results)
    lows = sorted(s[2][0] for r in results for s in r["slow"])
    table = "\n".join([
        "| measure | result |", "|---|---|",
        f"| unchanged study under load, gate fails (same-run A/B) | {sum(r['exit'] != 0 for r in results)} of {n} |",
        f"| 15% slower (every row), caught | {sum(all(s[0] for s in r['slow']) for r in results)} of {n} runs "
        f"({sum(s[0] for r in results for s in r['slow'])} of {sum(len(r['slow']) for r in results)} rows); "
        f"interval low ends {lows[0] * 100:+.1f}% .. {lows[-1] * 100:+.1f}% (limit +10%) |",
        f"| int8 1.1 points less accurate (4 of 360 samples), caught | {sum(r['acc']['1.1pt'] for r in results)} of {n} |",
        f"| int8 0.28 points less accurate (1 sample; 0.1 point is less than one sample), flagged "
        f"| {sum(r['acc']['0.28pt'] for r in results)} of {n} |"])
    print("\n" + table)
    if args.record:
        from results import record

        record("ci-gate", "Does the CI gate stay quiet on an unchanged study and catch a real regression, under load?",
               table, f"`benchmarks/ci.yaml` (digits, onnxruntime, 1 thread) run once without added load as the "
               f"baseline, then {n} times beside one busy core (a bounded Python loop) and gated with "
               "`edgeopt check` (same-run A/B: the baseline's artifacts re-timed beside the run's, 30 "
               "interleaved rounds, 90% intervals); the detections are made on each loaded run's artifacts.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
