"""``edgeopt check``: CI gate: compare a report with a baseline.

Compare REPORT with BASELINE variant by variant: latency by re-timing the baseline's artifacts
beside the report's in interleaved rounds when both are here (else as the ratio to each run's
reference variant), size in bytes, accuracy and agreement in points (paired, per sample), the task's
metric in its own units; a variant that failed now but not before is a regression. Every latency and
accuracy change is printed with its interval. Exit 1 on a regression beyond the limits, 0 otherwise,
2 on bad input (a baseline of another model or recipe, unless --force).
"""

from __future__ import annotations

from .common import add_command


def add_parser(sub):
    k = add_command(sub, __doc__, run)
    k.add_argument("report", metavar="REPORT.json")
    k.add_argument("--baseline", required=True, metavar="BASE.json")
    k.add_argument("--max-latency-regression", type=float, default=0.10,
                   help="allowed growth of the latency ratio, as a fraction (default: 0.10)")
    k.add_argument("--max-size-regression", type=float, default=0.01,
                   help="allowed growth of the size, as a fraction (default: 0.01)")
    k.add_argument("--max-accuracy-drop", type=float, default=0.005,
                   help="allowed top-1 drop, as a fraction (default: 0.005 = 0.5 points)")
    k.add_argument("--max-agreement-drop", type=float, default=None,
                   help="allowed drop of top-1 agreement with fp32, as a fraction (default: gated at "
                   "0.005 when the reports have no labels, shown otherwise)")
    k.add_argument("--max-metric-drop", type=float, default=None,
                   help="allowed change of the task's metric in its worse direction, in its own units "
                   "(default: not gated for top-1 tasks, where accuracy is gated; for other metrics a 5%% "
                   "rise of an error metric (mse, mae), a 0.005 fall of others (cosine))")
    k.add_argument("--max-class-drop", type=float, default=None,
                   help="allowed drop of any one class's accuracy, as a fraction (default: not gated)")
    k.add_argument("--max-ece-increase", type=float, default=None,
                   help="allowed rise of the expected calibration error (default: not gated)")
    k.add_argument("--max-robust-drop", type=float, default=None,
                   help="allowed drop of accuracy under any one perturbation, as a fraction "
                   "(default: not gated)")
    k.add_argument("--confidence", type=float, default=0.90,
                   help="level of the two-sided intervals the decisions use (default: 0.90; a latency fails "
                   "when its interval's low end is over the limit)")
    k.add_argument("--ab", choices=("auto", "on", "off"), default="auto",
                   help="re-time the baseline's artifacts beside the report's on this machine: auto (when "
                   "they are here), on (required: exit 2 when one is missing), off (ratios to each run's "
                   "reference)")
    k.add_argument("--ab-rounds", type=int, default=30, metavar="N",
                   help="interleaved rounds of the A/B re-timing (default: 30)")
    k.add_argument("--force", action="store_true",
                   help="compare with a baseline of another model, task or recipe")
    return k


def run(args) -> int:
    import sys

    from edgeopt.core.errors import CheckFailed, InputError
    from edgeopt.pipeline.gate import Thresholds, check_same_study, compare, format_rows, load_report, machine_note
    from edgeopt.pipeline.gate_retime import retime

    t = Thresholds(args.max_latency_regression, args.max_size_regression, args.max_accuracy_drop,
                   args.max_agreement_drop, args.max_metric_drop, args.max_class_drop,
                   args.max_ece_increase, args.max_robust_drop, args.confidence)
    if args.ab_rounds < 4:
        raise InputError(f"--ab-rounds must be an integer >= 4, got {args.ab_rounds}")
    report, baseline = load_report(args.report), load_report(args.baseline, "baseline")
    check_same_study(report, baseline, args.force)  # before any timing
    ab, notes = None, []
    if args.ab != "off":
        try:
            timing = retime(report, baseline, args.report, args.baseline, rounds=args.ab_rounds,
                            require_all=args.ab == "on", progress=True)
        except InputError as e:
            raise InputError(f"--ab on: {e}") from None
        ab = timing.intervals
        if timing.skipped:
            notes.append(f"latency of {len(timing.skipped)} row(s) compared as ratios to each run's reference, "
                         f"not re-timed here ({next(iter(timing.skipped.values()))})")
    else:
        notes.append("latency compared as ratios to each run's reference (--ab off)")
    if not ab or len(ab) < len(report["variants"]):
        notes += machine_note(report, baseline)
    rows = compare(report, baseline, t, ab=ab, force=args.force)
    print(format_rows(rows, t))
    for note in notes:
        print(note)
    bad = [r for r in rows if r["regressions"]]
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(rows)} variants regressed: "
                          + ", ".join(r["variant"] for r in bad))
    print(f"no regression in {len(rows)} variants")
    return 0
