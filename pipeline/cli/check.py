"""``edgeopt check``: the CI gate, a report against a baseline."""

from __future__ import annotations

from .common import EPILOG


def add_parser(sub):
    k = sub.add_parser("check", epilog=EPILOG, help="CI gate: compare a report with a baseline",
                       description="Compare REPORT with BASELINE variant by variant: latency as the ratio "
                       "to the run's reference variant, size in bytes, accuracy and agreement in points, "
                       "the task's metric in its own units; a variant that failed now but not before is "
                       "a regression. Exit 1 on a regression beyond the limits, 0 otherwise, 2 on bad input.")
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
                   "(default: not gated)")
    k.add_argument("--max-class-drop", type=float, default=None,
                   help="allowed drop of any one class's accuracy, as a fraction (default: not gated)")
    k.add_argument("--max-ece-increase", type=float, default=None,
                   help="allowed rise of the expected calibration error (default: not gated)")
    k.add_argument("--max-robust-drop", type=float, default=None,
                   help="allowed drop of accuracy under any one perturbation, as a fraction "
                   "(default: not gated)")
    k.set_defaults(func=run)
    return k


def run(args) -> int:
    from edgeopt.core.errors import CheckFailed
    from edgeopt.pipeline.gate import Thresholds, compare, format_rows, load_report

    t = Thresholds(args.max_latency_regression, args.max_size_regression, args.max_accuracy_drop,
                   args.max_agreement_drop, args.max_metric_drop, args.max_class_drop,
                   args.max_ece_increase, args.max_robust_drop)
    rows = compare(load_report(args.report), load_report(args.baseline, "baseline"), t)
    print(format_rows(rows, t))
    bad = [r for r in rows if r["regressions"]]
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(rows)} variants regressed: "
                          + ", ".join(r["variant"] for r in bad))
    print(f"no regression in {len(rows)} variants")
    return 0
