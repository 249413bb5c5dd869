"""TVM artifacts with oneDNN kernels against onnxruntime and OpenVINO, fp32, bf16 and int8, in one run.

For each zoo model: export fp32 ONNX; quantize it with edgeopt's default (u8 activations, s8
per-channel weights, mean-minmax calibration on seeded random inputs: a speed benchmark, the
models have random weights); quantize the same ONNX with NNCF (same calibration inputs) for
OpenVINO; build TVM artifacts with ``kernels: onednn`` (no tuning) from the fp32 and the int8
ONNX, and a bf16 build of the fp32 ONNX where the CPU has bf16 dot products (avx512_bf16 or
amx_bf16). Then time every runner in blocks, interleaved over rounds (2 threads, batch 1), and
report each median as a ratio to onnxruntime fp32 (and the int8 ones to onnxruntime int8).
Parity: TVM fp32 against onnxruntime fp32 (relative), TVM int8 against onnxruntime int8 (in
output quantization steps).

    .venv/bin/python benchmarks/kernels_latency.py --models resnet18,mobilenetv2,tiny_vit --record

Needs OpenVINO and NNCF: ``.venv/bin/python -m pip install -r requirements/bench.txt -c requirements/base.txt``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.pipeline.gate_stats import paired_ratio
from results import record


def prepare(model: str, work: Path, calib_n: int, log) -> dict:
    import onnx
    import torch

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.pipeline.models import load_model

    loaded = load_model(f"zoo:{model}", seed=0)
    shape = tuple(loaded.input_shape)
    fp32 = work / f"{model}.onnx"
    export(loaded.module.eval(), ExportConfig(), torch.randn(*shape), out=fp32)
    calib = np.random.default_rng(0).standard_normal((calib_n, *shape[1:])).astype(np.float32)
    int8 = work / f"{model}-int8.onnx"
    quantize(fp32, QuantizeConfig(), [calib[i:i + 1] for i in range(calib_n)], out=int8)
    log(f"{model}: NNCF")
    import nncf

    onnx_model = onnx.load(str(fp32))
    name = onnx_model.graph.input[0].name
    nncf_int8 = work / f"{model}-nncf.onnx"
    onnx.save(nncf.quantize(onnx_model, nncf.Dataset([{name: calib[i:i + 1]} for i in range(calib_n)]),
                            subset_size=calib_n), str(nncf_int8))
    log(f"{model}: TVM builds")
    tvm_fp32 = build(fp32, BuildConfig(target="cpu", kernels="onednn"), out=work / "tvm-fp32")
    tvm_int8 = build(int8, BuildConfig(target="cpu", kernels="onednn"), out=work / "tvm-int8")
    from edgeopt.runtimes.cpu_features import host_flags

    # bf16 where the CPU has bf16 dot products (a bf16 build for another CPU is refused)
    tvm_bf16 = (build(fp32, BuildConfig(target="cpu", kernels="onednn", precision="bf16"), out=work / "tvm-bf16")
                if {"avx512_bf16", "amx_bf16"} & (host_flags() or set()) else None)
    return {"fp32": fp32, "int8": int8, "nncf": nncf_int8, "tvm_fp32": tvm_fp32, "tvm_int8": tvm_int8,
            "tvm_bf16": tvm_bf16, "shape": shape}


def runners(paths: dict, threads: int) -> dict:
    import openvino as ov

    from edgeopt.runtimes import load

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}

    def ov_run(path, **hints):
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {**config, **hints})
        return lambda x: compiled(x[0])[0]

    def edgeopt_run(art, **options):
        r = load(art, threads=threads, **options)
        return lambda x: r.run(x)[0]

    # onnxruntime without spinning: several sessions share two cores in one process
    bf16 = {"TVM + oneDNN bf16": edgeopt_run(paths["tvm_bf16"].artifact)} if paths["tvm_bf16"] else {}
    return {
        "onnxruntime fp32": edgeopt_run(paths["fp32"], spin=False),
        "TVM + oneDNN fp32": edgeopt_run(paths["tvm_fp32"].artifact),
        **bf16,
        # OpenVINO runs "fp32" models in bf16 on CPUs with AVX-512 BF16 unless told otherwise
        "OpenVINO fp32": ov_run(paths["fp32"], INFERENCE_PRECISION_HINT="f32"),
        "OpenVINO default (bf16)": ov_run(paths["fp32"]),
        "onnxruntime int8": edgeopt_run(paths["int8"], spin=False),
        "TVM + oneDNN int8": edgeopt_run(paths["tvm_int8"].artifact),
        "OpenVINO int8 (NNCF)": ov_run(paths["nncf"]),
    }


def time_all(run: dict, x, rounds: int, repeat: int) -> tuple[dict, dict]:
    """({runner: median ms}, {runner: [each round's median]}): every runner timed in each round."""
    medians = {k: [] for k in run}
    for _ in range(rounds):
        for name, fn in run.items():
            for _ in range(5):
                fn(x)
            samples = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn(x)
                samples.append((time.perf_counter() - t) * 1e3)
            medians[name].append(float(np.median(samples)))
    return {k: float(np.median(v)) for k, v in medians.items()}, medians


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2,tiny_vit")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--calibration", type=int, default=16)
    p.add_argument("--record", action="store_true", help="write the table into its section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    from edgeopt.compile.int8_rewrite import output_step

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    rows = []
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="edgeopt-kernels-") as tmp:
            paths = prepare(model, Path(tmp), args.calibration, log)
            run = runners(paths, args.threads)
            x = [np.random.default_rng(1).standard_normal(paths["shape"]).astype(np.float32)]
            ref32, ref8 = run["onnxruntime fp32"](x), run["onnxruntime int8"](x)
            rel = float(np.abs(run["TVM + oneDNN fp32"](x) - ref32).max() / np.abs(ref32).max())
            steps = float(np.abs(run["TVM + oneDNN int8"](x) - ref8).max() / output_step(paths["int8"]))
            bf16 = (float(np.abs(run["TVM + oneDNN bf16"](x) - ref32).max() / np.abs(ref32).max())
                    if "TVM + oneDNN bf16" in run else None)
            ms, per_round = time_all(run, x, args.rounds, args.repeat)
            ops = paths["tvm_int8"].record["metrics"]["library_ops"]
            rows.append((model, ms, rel, steps, ops, bf16, per_round))
            log(f"{model}: {ms}")
    header = ("| model | runtime | median ms | x onnxruntime fp32 | x onnxruntime int8 |\n"
              "| --- | --- | ---: | ---: | ---: |\n")
    lines = []
    best = []
    for model, ms, rel, steps, ops, _, per_round in rows:
        for name, v in ms.items():
            int8_ratio = f"{v / ms['onnxruntime int8']:.2f}" if "int8" in name else ""
            lines.append(f"| {model} | {name} | {v:.3f} | {v / ms['onnxruntime fp32']:.2f} | {int8_ratio} |")
        ours = min((v, k) for k, v in ms.items() if not k.startswith("OpenVINO"))
        theirs = min((v, k) for k, v in ms.items() if k.startswith("OpenVINO"))
        # the per-round ratios of two runners timed in the same rounds, with a 90% interval
        vs_ov = paired_ratio(per_round["TVM + oneDNN int8"], per_round["OpenVINO int8 (NNCF)"])
        vs_ort = paired_ratio(per_round["TVM + oneDNN int8"], per_round["onnxruntime int8"])
        best.append(f"- {model}: edgeopt's fastest, {ours[1]} {ours[0]:.3f} ms, is {ours[0] / theirs[0]:.2f}x "
                    f"OpenVINO's fastest, {theirs[1]} {theirs[0]:.3f} ms; TVM int8 / OpenVINO int8 "
                    f"{vs_ov.ratio:.2f}x ({vs_ov.low:.2f}-{vs_ov.high:.2f}), TVM int8 / onnxruntime int8 "
                    f"{vs_ort.ratio:.2f}x ({vs_ort.low:.2f}-{vs_ort.high:.2f})")
    parity = "\n".join(f"- {model}: TVM fp32 vs onnxruntime fp32 max relative error {rel:.1e}; TVM int8 vs "
                       f"onnxruntime int8 max difference {steps:.2f} output quantization steps"
                       + (f"; TVM bf16 vs onnxruntime fp32 max relative error {bf16:.1e}" if bf16 is not None else "")
                       + f"; int8 build offloaded {ops}" for model, _, rel, steps, ops, bf16, _ in rows)
    body = (header + "\n".join(lines) + "\n\nFastest of each side (paired ratios: the median of the per-round "
            "ratios, 90% bootstrap interval over rounds):\n" + "\n".join(best)
            + "\n\nParity:\n" + parity + "\n")
    print(body)
    if args.record:
        record("kernels-latency",
               "How fast is a TVM artifact with oneDNN kernels against onnxruntime and OpenVINO on CPU?",
               body, note=f"Batch 1, {args.threads} threads; "
                          f"medians of {args.rounds} interleaved rounds of {args.repeat} runs; untuned TVM "
                          "builds (`kernels: onednn`), no tuning time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
