"""Tuned TVM (its own kernels) against onnxruntime for one zoo model, batch 1, measured in one run.

    .venv/bin/python benchmarks/tune_latency.py --model resnet18 --trials 640 --timeout 1800 [--record]
    .venv/bin/python benchmarks/tune_latency.py --model resnet18 --int8 --layout blocked --db build/tuning/r18-int8

``--int8`` quantizes the model first (edgeopt's default QDQ, 16 seeded random calibration
inputs) and compares with onnxruntime int8 on that file (parity in output quantization steps);
``--layout`` picks NCHW16c blocked convolutions (uint8 x int8 with VNNI in int8) or NCHW.
The table lists the tuned kernels that take longest with their operations per second.

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

from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
from edgeopt.compile.int8_rewrite import output_step
from edgeopt.compile.tuning_db import task_speeds
from edgeopt.compress import QuantizeConfig, onnx_flops, quantize
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load

from results import make_key, record

PEAK_GFLOPS = 237.0
#: VNNI: 2 cores x 2 pipes x 64 uint8 x int8 multiply-adds (2 operations each) ... halved on Zen 4's
#: 256-bit units, at ~3.7 GHz: ~950 GOP/s.
PEAK_GOPS_INT8 = 950.0


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
    p.add_argument("--int8", action="store_true", help="quantize first; compare with onnxruntime int8")
    p.add_argument("--layout", choices=("blocked", "nchw"), default="blocked")
    p.add_argument("--db", default=None, help="tuning database folder (default: edgeopt's cache)")
    p.add_argument("--untuned", action="store_true", help="also time the untuned build (slow)")
    p.add_argument("--kernels", type=int, default=8, help="tuned kernels listed")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    shape = ZOO[args.model].input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export(create(args.model), ExportConfig(), x, out=Path(tmp) / "m.onnx").path
        flops = onnx_flops(onnx_path)
        if args.int8:
            rng = np.random.default_rng(1)
            calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(16)]
            onnx_path = quantize(onnx_path, QuantizeConfig(debug_layers=0), calib, out=Path(tmp) / "q.onnx").path
        tune = TuneConfig(trials=args.trials, timeout_s=args.timeout, db=args.db,
                          trials_per_iter=args.trials_per_iter, population=args.population,
                          weight_prepack=not args.no_prepack, blocked_layout=args.layout == "blocked")
        t0 = time.perf_counter()
        built = build(onnx_path, BuildConfig(target="cpu", kernels="tvm", tune=tune), out=Path(tmp) / "tvm",
                      progress=log)
        build_s = time.perf_counter() - t0
        tuning = built.record["metrics"]["tuning"]
        runners = {"onnxruntime": load(onnx_path, threads=args.threads),
                   "tvm": load(built.output, threads=args.threads)}
        untuned_ms = float("nan")
        if args.untuned:  # untuned kernels are slow (ResNet-18: ~2 s a run): a few runs are enough
            untuned = build(onnx_path, BuildConfig(target="cpu", kernels="tvm"), out=Path(tmp) / "tvm-untuned")
            slow = load(untuned.output, threads=args.threads)
            untuned_ms = slow.benchmark(x, warmup=1, repeat=min(5, args.repeat)).latency.median_ms
        med = {k: [] for k in runners}
        for _ in range(3):
            for k, r in runners.items():
                med[k].append(r.benchmark(x, warmup=5, repeat=args.repeat).latency.median_ms)
        diff = float(np.max(np.abs(runners["tvm"].run(x)[0] - runners["onnxruntime"].run(x)[0])))
        err = f"{diff / output_step(onnx_path):.2f} output steps" if args.int8 else f"{diff:.1e}"
        speeds = task_speeds(tuning["db"])
    ort, tvm = statistics.median(med["onnxruntime"]), statistics.median(med["tvm"])
    precision = "int8" if args.int8 else "fp32"
    unit, peak = ("GOP/s", PEAK_GOPS_INT8) if args.int8 else ("GFLOP/s", PEAK_GFLOPS)
    table = "\n".join([
        f"| model | precision | layout | tuning trials in db | tuning s (this run) | tasks "
        f"| onnxruntime {precision} ms | untuned TVM ms | tuned TVM ms | tuned TVM / ORT | TVM {unit} | ORT {unit} | max diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.model} | {precision} | {args.layout} | {tuning['trials_after']} | {tuning['seconds']:.0f} "
        f"| {tuning['tasks']} | {ort:.2f} | {untuned_ms:.1f} | {tvm:.2f} | {tvm / ort:.2f}x "
        f"| {flops / tvm / 1e6:.0f} (peak ~{peak:.0f}) | {flops / ort / 1e6:.0f} | {err} |",
        "", f"Tuned kernels taking longest (best measured time per call; {unit} from TVM's operation count):", "",
        "| kernel | GOP | best ms | rate |", "|---|---|---|---|",
        *[f"| {r['kernel']} | {r['gop']:.3f} | {r['best_ms']:.3f} | {r['gops']:.0f} |"
          for r in speeds[:args.kernels]]])
    print(table)
    print(f"(build with tuning took {build_s:.0f} s)")
    if args.record:
        record(make_key("tune", args.model, precision, args.layout),
               f"Do TVM's own tuned {precision} kernels ({args.layout} layout) reach onnxruntime {precision} "
               f"on {args.model}?", table, f"Batch 1, {args.threads} threads; `kernels: tvm`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
