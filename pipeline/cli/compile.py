"""``edgeopt compile``: compile an ONNX model with TVM for a target.

Compile MODEL.onnx with TVM Relax into an artifact folder (model.so + manifest.json). QDQ-quantized
models are rewritten to int8 arithmetic with int8 weights. Cross targets need their compiler (arm:
g++-aarch64-linux-gnu). The options are the fields of BuildConfig, the same names a recipe's tvm
target uses (--tune-* for its TuneConfig).
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import INPUT_SHAPE_HELP, add_command, refuse_existing_file_parent, say
from .options import add_config_options, config_from_args


def add_parser(sub):
    cp = add_command(sub, __doc__, run)
    cp.add_argument("model", metavar="MODEL.onnx", help="ONNX file or ONNX artifact folder")
    cp.add_argument("--out", required=True, help="output artifact folder")
    cp.add_argument("--bundle", metavar="DIR", default=None,
                    help="also write a deployment bundle: the artifact, the native runner edgeopt-run "
                    "for the target's CPU and the TVM runtime libraries (copy it to a board and run)")
    cp.add_argument("--input-shape", action="append", default=None, metavar="[NAME=]1,3,H,W",
                    help=INPUT_SHAPE_HELP)
    add_config_options(cp, "compile", exclude=("input_shape",))
    return cp


def run(args) -> int:
    from edgeopt.core.errors import InputError
    from edgeopt.pipeline.steps import STEPS

    config = config_from_args("compile", args, input_shape=args.input_shape)  # bad values: now
    if args.bundle and Path(args.bundle).exists():
        raise InputError(f"--bundle {args.bundle!r} already exists; choose a new folder")
    refuse_existing_file_parent(args.out)  # before the build, not after it
    if args.bundle:
        refuse_existing_file_parent(args.bundle, "--bundle")
    result = STEPS["compile"].function(args.model, config, out=args.out, progress=say)
    art, last = result.artifact, result.record
    print(f"wrote {art.path} ({art.size_bytes():,} bytes) for {json.dumps(last['config']['target'])}"
          + (f"; {last['metrics']['int8_ops']} ops in int8" if last["metrics"].get("int8_ops") else "")
          + (f"; kernels: {last['metrics']['kernels']} ({last['metrics']['kernels_why']})"
             if last["metrics"].get("kernels") else ""))
    if args.bundle:
        from edgeopt.compile.bundle import make_bundle

        bundle = make_bundle(art, args.bundle, progress=say)
        run_line = next(ln.strip() for ln in (bundle / "README.txt").read_text().splitlines()
                        if ln.strip().startswith("./edgeopt-run"))
        print(f"wrote the deployment bundle {bundle}; on the device: cd {bundle.name} && {run_line}")
    return 0
