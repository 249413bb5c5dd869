"""onnxruntime int8 against fp32 latency, batch 1, measured as a ratio in one run.

    .venv/bin/python benchmarks/quantize_speed.py --models resnet18,mobilenetv2 --threads 2 [--record]

Each zoo model is exported, quantized (static, per-channel int8 weights, uint8 activations,
MinMax calibration on 16 seeded random inputs: the calibration method does not change speed),
then fp32 and int8 sessions are timed in alternating blocks (fp32, int8, fp32, int8) so that
drift hits both; the ratio uses the medians over both blocks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import QuantizeConfig, fidelity, quantize
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

from results import make_key, record


def measure(model: str, threads: int, repeat: int, fmt: str, per_channel: bool, tmp: Path) -> list[str]:
    shape = ZOO[model].input_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(16)]
    fp32 = export(create(model), ExportConfig(), x, out=tmp / f"{model}.onnx").path
    q = quantize(fp32, QuantizeConfig(method="minmax", format=fmt, per_channel=per_channel), calib,
                 out=tmp / f"{model}-int8.onnx").path
    runners = {"fp32": OnnxRuntimeRunner(fp32, threads=threads),
               "int8": OnnxRuntimeRunner(q, threads=threads)}
    samples = {"fp32": [], "int8": []}
    for _ in range(2):
        for name, r in runners.items():
            samples[name].append(r.benchmark(x, warmup=5, repeat=repeat).latency.median_ms)
    med = {k: statistics.median(v) for k, v in samples.items()}
    f = fidelity(runners["fp32"].run(x)[0], runners["int8"].run(x)[0])
    kind = f"{fmt}, {'per-channel' if per_channel else 'per-tensor'}"
    return [f"| {model} | {kind} | {med['fp32']:.2f} | {med['int8']:.2f} | {med['fp32'] / med['int8']:.2f}x "
            f"| {fp32.stat().st_size / 1e6:.1f} MB | {q.stat().st_size / 1e6:.1f} MB | {f.sqnr_db:.1f} |"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--format", default="qdq", choices=["qdq", "qoperator"])
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    rows = ["| model | weights | fp32 median ms | int8 median ms | speedup | fp32 size | int8 size | SQNR dB |",
            "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models.split(","):
            rows += measure(m, args.threads, args.repeat, args.format, not args.per_tensor, Path(tmp))
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.record:
        record(make_key("quantize-speed", *([args.format] if args.format != "qdq" else []),
                        *(["per-tensor"] if args.per_tensor else [])),
               f"What does int8 buy on onnxruntime ({args.models.replace(',', ', ')})?", table,
               f"Batch 1, {args.threads} threads.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
