"""How far apart two correct evaluations of one int8 model are: TVM against onnxruntime's two.

For each zoo model: export, quantize with edgeopt's default (16 seeded random calibration
inputs), build TVM artifacts with oneDNN kernels and with TVM's own kernels, then compare on
``--inputs`` random inputs, in output quantization steps (the scale of the output's
DequantizeLinear):

- onnxruntime as users run it (graph optimizations on: QDQ groups fused into integer kernels)
  against onnxruntime evaluating the QDQ graph literally (optimizations off: dequantize, float
  op, quantize): the spread of onnxruntime against itself;
- each TVM artifact against both.

Every int8 backend rounds a value that sits on a rounding boundary its own way (integer
accumulation here, float accumulation there); in a deep model such one-step differences of
intermediate tensors compound, so the spread grows with depth. The question this answers is
whether TVM stays within onnxruntime's own spread.

    .venv/bin/python benchmarks/int8_parity.py --models resnet18,mobilenetv2,tiny_vit --record
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from results import record


def measure(model: str, work: Path, n_inputs: int) -> dict:
    import onnxruntime as ort
    import torch

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.pipeline.models import load_model
    from edgeopt.runtimes import load

    loaded = load_model(f"zoo:{model}", seed=0)
    shape = tuple(loaded.input_shape)
    fp32 = export(loaded.module.eval(), ExportConfig(), torch.randn(*shape), out=work / "fp32.onnx").path
    calib = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(debug_layers=0), [calib[i:i + 1] for i in range(16)],
                    out=work / "int8.onnx").path
    step = output_step(int8)

    def session(level):
        o = ort.SessionOptions()
        o.graph_optimization_level = level
        o.log_severity_level = 3
        s = ort.InferenceSession(str(int8), o, providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {s.get_inputs()[0].name: x})[0]

    ort_fused = session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    ort_literal = session(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    tvm = {k: load(build(int8, BuildConfig(target="cpu", kernels=k), out=work / f"tvm-{k}").artifact)
           for k in ("onednn", "tvm")}
    worst: dict[str, float] = {}
    for i in range(n_inputs):
        x = np.random.default_rng(100 + i).standard_normal(shape).astype(np.float32)
        fused, literal = ort_fused(x), ort_literal(x)
        diffs = {"onnxruntime fused vs literal": np.abs(fused - literal)}
        for kernels, runner in tvm.items():
            out = runner.run([x])[0]
            diffs[f"TVM ({kernels}) vs onnxruntime fused"] = np.abs(out - fused)
            diffs[f"TVM ({kernels}) vs onnxruntime literal"] = np.abs(out - literal)
        for k, d in diffs.items():
            worst[k] = max(worst.get(k, 0.0), float(d.max() / step))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2,tiny_vit")
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--record", action="store_true", help="write the table into its section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    rows = {}
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="edgeopt-parity-") as tmp:
            rows[model] = measure(model, Path(tmp), args.inputs)
        print(model, rows[model], file=sys.stderr)
    columns = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {m} | " + " | ".join(f"{r[c]:.0f}" for c in columns) + " |" for m, r in rows.items()]
    body = ("Largest difference over the inputs, in output quantization steps.\n\n" + "\n".join(lines))
    print(body)
    if args.record:
        record("int8-parity", "Does TVM's int8 compute what onnxruntime's int8 computes?", body,
               f"{args.inputs} seeded random inputs per model, random-weight zoo models, edgeopt's default "
               "quantization (16 random calibration inputs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
