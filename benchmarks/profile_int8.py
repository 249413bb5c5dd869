"""Per-kernel profile of a zoo model in fp32 and int8 on onnxruntime (why int8 pays or not).

    .venv/bin/python benchmarks/profile_int8.py --model mobilenetv2 --threads 2 [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes.onnxruntime_runner import profile_ops

from results import make_key, record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    shape = ZOO[args.model].input_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(create(args.model), ExportConfig(), x, out=Path(tmp) / "fp32.onnx").path
        q = quantize(fp32, QuantizeConfig(method="minmax"), calib, out=Path(tmp) / "int8.onnx").path
        profiles = {"fp32": profile_ops(fp32, x, args.runs, args.threads),
                    "int8": profile_ops(q, x, args.runs, args.threads)}
    rows = [f"| {args.model} | kernel | nodes | ms per run |", "|---|---|---|---|"]
    for name, prof in profiles.items():
        for kind, v in prof.items():
            rows.append(f"| {name} | {kind} | {v['nodes']} | {v['ms_per_run']:.3f} |")
        rows.append(f"| {name} | **total** | | **{sum(v['ms_per_run'] for v in prof.values()):.3f}** |")
    table = "\n".join(rows)
    print(table)
    if args.record:
        record(make_key("profile-int8", args.model), f"Where does {args.model}'s int8 time go on onnxruntime?",
               table,
               "(Profiler timings carry overhead; compare kernel kinds, not totals with the benchmark.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
