"""The built-in demo: the digits trade-off study of ``benchmarks/digits.yaml``.

The recipe is kept here too (``DEMO_RECIPE``) so that an installed edgeopt runs the demo without
the repository; a test checks that both copies are the same.

Example:
    >>> from edgeopt.pipeline.demo import run_demo  # doctest: +SKIP
    >>> report = run_demo(out="build/demo", repeat=50)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time

from .recipe import parse_recipe
from .run import run_recipe

DEMO_RECIPE = """\
# The built-in default study: `edgeopt demo` (and `make demo`) runs exactly this recipe.
model: zoo:digits_cnn
task: digits
variants:
  fp32: []
  lowrank+kd:
    - lowrank: {energy: 0.97, energy_on: responses}
    - distill: {epochs: 10, shift: 2, patience: null}
  pruned+kd:
    - prune: {amount: 0.5, scope: local}
    - distill: {epochs: 10, shift: 2, patience: null}
  int8:
    - quantize: {calibration: entropy, per_channel: true}
  pruned+kd+int8:
    - prune: {amount: 0.5, scope: local}
    - distill: {epochs: 10, shift: 2, patience: null}
    - quantize: {calibration: entropy, per_channel: true}
targets:
  - runtime: torch
  - runtime: onnxruntime
  - runtime: tvm
    target: cpu
bench: {warmup: 10, repeat: 100}
"""


def run_demo(out: str | os.PathLike = "build/demo", threads: int | None = None,
             warmup: int | None = None, repeat: int | None = None) -> dict:
    """Run the demo study into ``out``; print the table; return the report."""
    t0 = time.perf_counter()
    recipe = parse_recipe(DEMO_RECIPE, "<built-in demo recipe>")
    bench = dict(recipe.bench)
    for key, value in (("threads", threads), ("warmup", warmup), ("repeat", repeat)):
        if value is not None:
            bench[key] = value
    recipe = dataclasses.replace(recipe, bench=bench)
    report = run_recipe(recipe, out)
    fp32 = [v for v in report["variants"] if v["name"] == "fp32"]
    same = len({v["predictions_sha256"] for v in fp32}) == 1
    print()
    print(f"fp32 top-1 predictions identical across {', '.join(v['runtime'] for v in fp32)}: "
          + ("yes" if same else "NO"))
    print(f"wrote report.json, report.md, pareto.png and index.html in {out} "
          f"in {time.perf_counter() - t0:.0f} s")
    return report
