"""Latency of one zoo model on torch eager, onnxruntime and untuned TVM, measured in one run.

Each runtime is timed in its own block with the same input and thread count; ratios are against
onnxruntime's median from the same run (machines are noisy: compare ratios, not milliseconds).

    .venv/bin/python benchmarks/runtime_latency.py --model zoo:resnet18 --threads 2 --repeat 20

``--record`` appends the table, the command and the machine to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from edgeopt.pipeline.models import load_model
from edgeopt.pipeline.report import markdown, text_table
from edgeopt.pipeline.study import BenchConfig, compare_runtimes

from results import record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--runtimes", default="torch,onnxruntime,tvm")
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    loaded = load_model(args.model)
    x = np.random.default_rng(0).standard_normal(loaded.input_shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        report = compare_runtimes(loaded.module, x, tmp, runtimes=args.runtimes.split(","),
                                  bench=BenchConfig(args.warmup, args.repeat, args.threads),
                                  log=lambda s: print(s, file=sys.stderr))
    print(text_table(report))
    if args.record:
        record(f"{args.model}, batch 1, {args.threads} threads: torch / onnxruntime / untuned TVM",
               markdown(report).split("\n", 2)[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
