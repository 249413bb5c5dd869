"""Where TVM loses against onnxruntime on a real-model study: per-op time on both.

    .venv/bin/python benchmarks/real_models/profile_tvm.py STUDY_DIR [--variant fp32] [--threads 1]

For the variant's onnxruntime model (the base model for fp32, `variants/VARIANT/quantize` for
int8): `edgeopt.runtimes.onnxruntime_runner.profile_ops` (ms per run per kernel kind). For its
`variants/VARIANT/tvm-cpu` artifact: every call of the Relax VM timed through its instrument
hook (TVM's fused PrimFuncs, the oneDNN plugin's packed calls, the VM's builtins), grouped by
name with the number of calls per run, plus the build record (library ops, kernels, layout
fallbacks). Both time one random input (per model input) on `--threads` threads. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeopt.runtimes import load
from edgeopt.runtimes.artifact import load_artifact
from edgeopt.runtimes.base import example_inputs
from edgeopt.runtimes.onnxruntime_runner import profile_ops


def tvm_profile(folder: Path, x: list[np.ndarray], threads: int, runs: int) -> dict:
    """Per-call time of the Relax VM (ms per run), grouped by callee name with digits dropped.

    TVM 0.27's VM has no profiling executable any more; its instrument hook (called before and
    after every Call instruction) times each call here. Builtins (allocations, shape checks) count
    as calls too: their number is the VM's per-call overhead."""
    import time

    runner = load(folder, "tvm", threads=threads)        # loads the plugin and sizes the pool
    runner.run(x)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started.append(time.perf_counter())
        else:
            entry = totals[re.sub(r"\d+", "", str(symbol))]
            entry[0] += (time.perf_counter() - started.pop()) * 1000 / runs
            entry[1] += 1 / runs
        return 0                                         # VMInstrumentReturnKind.kNoOp

    runner.vm.set_instrument(instrument)
    wall = time.perf_counter()
    for _ in range(runs):
        runner.run(x)
    wall_ms = (time.perf_counter() - wall) * 1000 / runs
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return {"instrumented_wall_ms": round(wall_ms, 3), "calls_per_run": round(sum(v[1] for v in totals.values())),
            "top": [{"kernel": k, "ms": round(v[0], 3), "calls": round(v[1])} for k, v in rows[:15]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    variant = args.study / "variants" / args.variant
    onnx_model = (variant / "quantize" if (variant / "quantize").exists() else args.study / "base-model")
    artifact = load_artifact(onnx_model)
    compiled = load_artifact(variant / "tvm-cpu")
    # each its own inputs: a study may hold some constant in the compiled model (silero-vad's sr)
    ort = profile_ops(artifact.model_file, example_inputs(artifact.inputs), runs=args.runs, threads=args.threads)
    compile_record = next(h for h in compiled.history if h["name"] == "compile")
    out = {"study": str(args.study), "variant": args.variant, "threads": args.threads, "onnxruntime": ort,
           "tvm": tvm_profile(variant / "tvm-cpu", example_inputs(compiled.inputs), args.threads, args.runs),
           "tvm_build": compile_record["metrics"]}
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
