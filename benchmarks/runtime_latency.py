"""Latency of one zoo model on torch eager, onnxruntime and untuned TVM, measured in one run.

The study is the recipe ``benchmarks/runtimes.yaml`` (run by ``edgeopt run`` like any other); this
script only swaps in another model or timing settings. Ratios are against onnxruntime's median
from the same run (machines are noisy: compare ratios, not milliseconds).

    .venv/bin/python benchmarks/runtime_latency.py --model zoo:resnet18 --threads 2 --repeat 20

``--record`` writes the table, the command and the machine into its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from edgeopt.pipeline.recipe import load_recipe
from edgeopt.pipeline.report_text import markdown, text_table
from edgeopt.pipeline.run import run_recipe

from results import make_key, record

RECIPE = Path(__file__).with_name("runtimes.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--record", action="store_true", help="write the table into its section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    recipe = dataclasses.replace(load_recipe(RECIPE), model=args.model,
                                 bench={"warmup": args.warmup, "repeat": args.repeat, "threads": args.threads})
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        report = run_recipe(recipe, tmp, progress=lambda s: print(s, file=sys.stderr))
    print(text_table(report))
    if args.record:
        record(make_key("runtime-latency", args.model),
               f"How do torch, onnxruntime and untuned TVM compare on {args.model}?",
               markdown(report).split("\n", 2)[2], f"Batch 1, {args.threads} threads.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
