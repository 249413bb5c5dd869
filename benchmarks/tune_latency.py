"""Tuned TVM against onnxruntime fp32 for one zoo model, batch 1, measured in one run.

    .venv/bin/python benchmarks/tune_latency.py --model resnet18 --trials 640 --timeout 1800 [--record]

Tunes with MetaSchedule into the persisted database (a re-run reuses it and only tops it up),
builds, then times onnxruntime and TVM in alternating blocks. Reports GFLOP/s next to the CPU's
fp32 peak: the CPU these figures were measured on is Zen 4 (LLVM: znver4, "AMD EPYC" family 25 model 17), which runs
512-bit FMAs on 256-bit units: 2 FMA pipes x 8 fp32 lanes x 2 = 32 FLOP/cycle/core; 2 cores at a
~3.7 GHz boost give ~237 GFLOP/s. (Zen 5's full-width units double that.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.compile import TuneConfig, build, export
from edgeopt.compress import onnx_flops
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load

from results import record

PEAK_GFLOPS = 237.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--trials", type=int, default=640)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--trials-per-iter", type=int, default=TuneConfig.trials_per_iter)
    p.add_argument("--population", type=int, default=TuneConfig.population)
    p.add_argument("--no-prepack", action="store_true", help="keep the weights' layout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    shape = ZOO[args.model].input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export(create(args.model), x, Path(tmp) / "m.onnx").path
        flops = onnx_flops(onnx_path)
        t0 = time.perf_counter()
        art = build(onnx_path, "cpu", Path(tmp) / "tvm",
                    tune=TuneConfig(trials=args.trials, timeout_s=args.timeout,
                                    trials_per_iter=args.trials_per_iter, population=args.population,
                                    weight_prepack=not args.no_prepack),
                    log=lambda s: print(s, file=sys.stderr, flush=True))
        build_s = time.perf_counter() - t0
        tuning = art.history[-1]["metrics"]["tuning"]
        untuned = build(onnx_path, "cpu", Path(tmp) / "tvm-untuned")
        runners = {"onnxruntime": load(onnx_path, threads=args.threads), "tvm": load(art, threads=args.threads)}
        # Untuned kernels are slow (ResNet-18: ~2 s a run): a few runs are enough.
        slow = load(untuned, threads=args.threads)
        untuned_ms = slow.benchmark(x, warmup=1, repeat=min(5, args.repeat)).latency.median_ms
        med = {k: [] for k in runners}
        for _ in range(2):
            for k, r in runners.items():
                med[k].append(r.benchmark(x, warmup=5, repeat=args.repeat).latency.median_ms)
        err = float(np.max(np.abs(runners["tvm"].run(x)[0] - runners["onnxruntime"].run(x)[0])))
    ort, tvm = statistics.median(med["onnxruntime"]), statistics.median(med["tvm"])
    table = "\n".join([
        "| model | tuning trials in db | tuning s (this run) | tasks | onnxruntime ms | untuned TVM ms | tuned TVM ms "
        "| tuned TVM / ORT | TVM GFLOP/s | ORT GFLOP/s | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.model} | {tuning['trials_after']} | {tuning['seconds']:.0f} | {tuning['tasks']} | {ort:.2f} "
        f"| {untuned_ms:.1f} | {tvm:.2f} | {tvm / ort:.2f}x | {flops / tvm / 1e6:.0f} (peak ~{PEAK_GFLOPS:.0f}) "
        f"| {flops / ort / 1e6:.0f} | {err:.1e} |"])
    print(table)
    print(f"(build with tuning took {build_s:.0f} s)")
    if args.record:
        record(f"Tuned TVM vs onnxruntime, {args.model}, batch 1, {args.threads} threads", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
