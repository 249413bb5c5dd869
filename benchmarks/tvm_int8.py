"""int8 through TVM: artifact size against the fp32 TVM artifact, parity with onnxruntime int8.

    .venv/bin/python benchmarks/tvm_int8.py --models digits_cnn,resnet18,mobilenetv2,tiny_vit [--record]

Each zoo model is exported, quantized with onnxruntime (static QDQ, per-channel int8 weights,
uint8 activations, MinMax on 8 seeded random inputs), then compiled with TVM for the host CPU
twice: fp32, and int8 through edgeopt's QDQ -> int8 Relax rewrite. Parity compares TVM int8 with
onnxruntime int8 on the same inputs, in units of the output's quantization step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.int8_rewrite import output_step
from edgeopt.compress import QuantizeConfig, fidelity, quantize
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load

from results import record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits_cnn,resnet18,mobilenetv2,tiny_vit")
    p.add_argument("--inputs", type=int, default=2, help="inputs for the parity check")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    rows = ["| model | int8 ops rewritten | fp32 TVM .so | int8 TVM .so | size ratio | max diff (output steps) "
            "| top-1 agreement TVM/ORT int8 | build s |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            shape = ZOO[name].input_shape
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape).astype(np.float32)
            fp32 = export(create(name), ExportConfig(), x, out=tmp / f"{name}.onnx").path
            calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
            q = quantize(fp32, QuantizeConfig(method="minmax"), calib, out=tmp / f"{name}-int8.onnx").path
            t0 = time.perf_counter()
            a32 = build(fp32, BuildConfig(target="cpu"), out=tmp / f"{name}-tvm").output
            a8 = build(q, BuildConfig(target="cpu"), out=tmp / f"{name}-tvm-int8").output
            secs = time.perf_counter() - t0
            ort8, tvm8 = load(q), load(a8)
            checks = [rng.standard_normal(shape).astype(np.float32) for _ in range(args.inputs)]
            ref = np.concatenate([ort8.run(c)[0] for c in checks])
            got = np.concatenate([tvm8.run(c)[0] for c in checks])
            steps = float(np.max(np.abs(ref - got))) / output_step(q)
            f = fidelity(ref, got)
            rows.append(f"| {name} | {a8.history[-1]['metrics']['int8_ops']} | {a32.size_bytes() / 1e6:.2f} MB "
                        f"| {a8.size_bytes() / 1e6:.2f} MB | {a8.size_bytes() / a32.size_bytes():.3f} "
                        f"| {steps:.2f} | {f.agreement * 100:.0f}% | {secs:.0f} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.record:
        record("tvm-int8", "How much smaller is a TVM int8 artifact than the fp32 one?", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
