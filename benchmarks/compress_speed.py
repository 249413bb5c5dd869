"""onnxruntime latency of compressed zoo models against the original, as ratios in one run.

    .venv/bin/python benchmarks/compress_speed.py --model resnet18 --threads 2 [--record]

Random weights are fine for speed. Variants: 50% structured channel pruning, and lowrank with a
2x FLOPs budget (flops_budget=0.5, sensitivity measured on 4 seeded random inputs). Each is
exported (parity-checked) and timed in alternating blocks with the original.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import LowRankConfig, PruneConfig, count_flops, count_params, lowrank, prune
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

from results import make_key, record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    shape = ZOO[args.model].input_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    calib = rng.standard_normal((4, *shape[1:])).astype(np.float32)
    model = create(args.model)
    t0 = time.perf_counter()
    variants = {"original": model}
    variants["prune 50% structured"] = prune(model, PruneConfig(amount=0.5, scope="local"), x).output
    variants["lowrank flops_budget 0.5"] = lowrank(model, LowRankConfig(flops_budget=0.5), x,
                                                   calibration=calib, progress=False).output
    compress_s = time.perf_counter() - t0
    rows = ["| variant | params | FLOPs | ONNX size | output shape | parity max rel | median ms | speedup |",
            "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        runners, info = {}, {}
        for name, m in variants.items():
            r = export(m, ExportConfig(), x, out=Path(tmp) / f"{len(runners)}.onnx")
            runners[name] = OnnxRuntimeRunner(r.path, threads=args.threads)
            info[name] = (count_params(m), count_flops(m, x), r.path.stat().st_size,
                          tuple(runners[name].run(x)[0].shape), r.metrics["parity"]["max_rel"])
        times = {k: [] for k in runners}
        for _ in range(2):
            for name, runner in runners.items():
                times[name].append(runner.benchmark(x, warmup=5, repeat=args.repeat).latency.median_ms)
    base = statistics.median(times["original"])
    for name in runners:
        params, flops, size, oshape, rel = info[name]
        med = statistics.median(times[name])
        rows.append(f"| {name} | {params:,} | {flops / 1e9:.2f} G | {size / 1e6:.1f} MB | {oshape} "
                    f"| {rel:.1e} | {med:.2f} | {base / med:.2f}x |")
    table = "\n".join(rows)
    print(table)
    print(f"(compression took {compress_s:.0f} s)")
    if args.record:
        record(make_key("compress-speed", args.model),
               f"How much faster is a pruned or low-rank {args.model} on onnxruntime?", table,
               f"Batch 1, {args.threads} threads. Compression (pruning + the lowrank budget search) took "
               f"{compress_s:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
