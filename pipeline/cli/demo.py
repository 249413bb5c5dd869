"""``edgeopt demo``: run the built-in trade-off study.

Train the built-in model on the built-in task and run the built-in study (fp32, lowrank+kd,
pruned+kd, int8 and pruned+kd+int8 on torch, onnxruntime and TVM); write report.json, report.md,
pareto.png and index.html.
"""

from __future__ import annotations

from .common import add_command, nonneg_int, positive_int, refuse_existing_file_parent


def add_parser(sub):
    d = add_command(sub, __doc__, run)
    d.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    d.add_argument("--threads", type=positive_int, default=None,
                   help="threads for every runtime (default: one per core)")
    d.add_argument("--warmup", type=nonneg_int, default=None, help="untimed runs first (default: 10)")
    d.add_argument("--repeat", type=positive_int, default=None, help="timed runs (default: 100)")
    return d


def run(args) -> int:
    from edgeopt.pipeline.demo import run_demo

    refuse_existing_file_parent(args.out)  # before the training, not after it
    report = run_demo(out=args.out, threads=args.threads, warmup=args.warmup, repeat=args.repeat)
    return 3 if any(v.get("status") == "failed" for v in report["variants"]) else 0
