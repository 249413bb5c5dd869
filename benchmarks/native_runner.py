"""The native C++ runner against the Python TVM VM on every zoo model: outputs and latency.

    .venv/bin/python benchmarks/native_runner.py [--models digits_cnn,resnet18,...] [--record]

Each model is exported, compiled for the host CPU (with its tuning database applied when one
exists in the default cache: a tuned build with no new trials), and run by both runtimes on the
same input. Parity is max|native - python| / max|python|; the issue's bar is 1e-5. Latency: the
two runtimes are timed in alternating blocks (two each), the medians of the block medians are
compared; the bar is agreement within 15%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
from edgeopt.compile.native_build import runner_binary
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load

from results import record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(sorted(ZOO)))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    rows = ["| model | TVM schedules | python VM ms | native ms | native / python | max rel diff |",
            "|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        x = np.random.default_rng(0).standard_normal(ZOO[name].input_shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export(create(name), ExportConfig(), x, out=Path(tmp) / "m.onnx").path
            art = build(onnx_path, BuildConfig(target="cpu", tune=TuneConfig(trials=0)),
                        out=Path(tmp) / "tvm").output
            trials = art.history[-1]["metrics"]["tuning"]["trials_after"]
            runners = {"python": load(art, runtime="tvm", threads=args.threads),
                       "native": load(art, runtime="native", threads=args.threads,
                                      provide_binary=runner_binary)}
            out = {k: r.run(x)[0] for k, r in runners.items()}
            rel = float(np.max(np.abs(out["native"] - out["python"])) / np.max(np.abs(out["python"])))
            repeat = args.repeat if trials else min(args.repeat, 5)  # untuned kernels are slow
            med = {k: [] for k in runners}
            for _ in range(2):
                for k, r in runners.items():
                    med[k].append(r.benchmark(x, warmup=3, repeat=repeat).latency.median_ms)
        py, nat = statistics.median(med["python"]), statistics.median(med["native"])
        rows.append(f"| {name} | {'tuned (' + str(trials) + ' records)' if trials else 'default (untuned)'} "
                    f"| {py:.3f} | {nat:.3f} | {nat / py:.3f} | {rel:.1e} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.record:
        record("native-runner", "Does the native runner (edgeopt-run) cost anything against the Python TVM VM?",
               table, f"Batch 1, {args.threads} threads.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
