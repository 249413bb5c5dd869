"""``edgeopt compile``: an ONNX model to a TVM artifact for a target (and a deployment bundle)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import EPILOG, INPUT_SHAPE_HELP, nonneg_int, say
from .common import refuse_existing_file_parent


def add_parser(sub):
    cp = sub.add_parser("compile", epilog=EPILOG, help="compile an ONNX model with TVM for a target",
                        description="Compile MODEL.onnx with TVM Relax into an artifact folder (model.so + "
                        "manifest.json). QDQ-quantized models are rewritten to int8 arithmetic with "
                        "int8 weights. Cross targets need their compiler (arm: g++-aarch64-linux-gnu).")
    cp.add_argument("model", metavar="MODEL.onnx", help="ONNX file or ONNX artifact folder")
    cp.add_argument("--target", default="cpu",
                    help="cpu, arm, arm:cortex-a72|cortex-a76|neoverse-n1, cuda, cuda:sm_80|..., "
                    "or a TVM target as JSON (default: cpu)")
    cp.add_argument("--out", required=True, help="output artifact folder")
    cp.add_argument("--no-int8", action="store_true", help="keep QDQ models in float arithmetic")
    cp.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                    help="fp16: convs and matmuls in float16 on tensor cores (cuda targets only; "
                    "inputs and outputs stay float32)")
    cp.add_argument("--no-cuda-graph", action="store_true",
                    help="cuda targets: launch each kernel on every call instead of replaying a "
                    "captured CUDA graph")
    cp.add_argument("--exact-math", action="store_true",
                    help="CPU targets: erf and tanh in TVM's default lowering (erf: a C library "
                    "call per element) instead of vectorized polynomials (within 1e-6)")
    cp.add_argument("--tune-trials", type=nonneg_int, default=0,
                    help="MetaSchedule trials to have in the tuning database (default: 0, no tuning)")
    cp.add_argument("--bundle", metavar="DIR", default=None,
                    help="also write a deployment bundle: the artifact, the native runner edgeopt-run "
                    "for the target's CPU and the TVM runtime libraries (copy it to a board and run)")
    cp.add_argument("--tracker", metavar="HOST:PORT", default=None,
                    help="measure tuning candidates on the devices of this TVM RPC tracker (with --key)")
    cp.add_argument("--key", default=None, help="device key at the tracker, for --tracker")
    cp.add_argument("--tune-timeout", type=float, default=None,
                    help="stop tuning after this many seconds; what was measured is kept")
    cp.add_argument("--kernels", choices=("auto", "tvm", "onednn"), default="auto",
                    help="convolutions and matmuls on x86-64: oneDNN through edgeopt's plugin, TVM's "
                    "own kernels, or auto (oneDNN untuned; tuned, the faster of both timed here)")
    cp.add_argument("--input-shape", action="append", default=None, metavar="[NAME=]1,3,H,W",
                    help=INPUT_SHAPE_HELP)
    cp.add_argument("--tuning-db", default=None,
                    help="tuning database folder (default: ~/.cache/edgeopt/tuning/<model>-<target>)")
    cp.set_defaults(func=run)
    return cp


def run(args) -> int:
    from edgeopt.compile import BuildConfig, TuneConfig, build
    from edgeopt.core.errors import InputError

    if args.bundle and Path(args.bundle).exists():
        raise InputError(f"--bundle {args.bundle!r} already exists; choose a new folder")
    if bool(args.tracker) != bool(args.key):
        raise InputError("--tracker and --key go together (tuning measured on the tracker's devices)")
    if args.tracker and not args.tune_trials:
        raise InputError("--tracker is for tuning; give --tune-trials N as well")
    refuse_existing_file_parent(args.out)  # before the build, not after it
    if args.bundle:
        refuse_existing_file_parent(args.bundle, "--bundle")
    tune = None
    if args.tune_trials or args.tuning_db:
        tune = TuneConfig(trials=args.tune_trials, timeout_s=args.tune_timeout, db=args.tuning_db,
                          tracker=args.tracker, key=args.key)
    config = BuildConfig(target=args.target, int8=False if args.no_int8 else None, tune=tune,
                         precision=args.precision, cuda_graph=not args.no_cuda_graph, kernels=args.kernels,
                         fast_math=not args.exact_math, input_shape=args.input_shape)
    result = build(args.model, config, out=args.out, progress=say)
    art, last = result.artifact, result.record
    print(f"wrote {art.path} ({art.size_bytes():,} bytes) for {json.dumps(last['config']['target'])}"
          + (f"; {last['metrics']['int8_ops']} ops in int8" if last["metrics"].get("int8_ops") else "")
          + (f"; kernels: {last['metrics']['kernels']} ({last['metrics']['kernels_why']})"
             if last["metrics"].get("kernels") else ""))
    if args.bundle:
        from edgeopt.compile.bundle import make_bundle

        bundle = make_bundle(art, args.bundle, log=say)
        run_line = next(ln.strip() for ln in (bundle / "README.txt").read_text().splitlines()
                        if ln.strip().startswith("./edgeopt-run"))
        print(f"wrote the deployment bundle {bundle}; on the device: cd {bundle.name} && {run_line}")
    return 0
