"""``edgeopt export``: export a torch model to ONNX with a parity check.

Export MODEL to ONNX, run the ONNX checker and shape inference, and compare onnxruntime with torch
on the example input. The file is written only if the relative error is within --rtol (else exit 1).
The options --opset to --output-names are the fields of ExportConfig.
"""

from __future__ import annotations

from .common import WEIGHTS_HELP, add_command, list_zoo_in_help, refuse_existing_file_parent, torch_model
from .options import add_config_options, config_from_args


def add_parser(sub):
    e = add_command(sub, __doc__, run)
    list_zoo_in_help(e.add_argument("model", metavar="MODEL",
                                    help="zoo:NAME (%(zoo)s), module.path:factory, or a torch.export "
                                    ".pt2 file"))
    e.add_argument("--out", required=True, help="output .onnx file, or a folder for an artifact")
    e.add_argument("--input-shape", default=None,
                   help="example input shape, e.g. 1,3,32,32 (default: the model's own)")
    e.add_argument("--weights", default=None, metavar="FILE.pth", help=WEIGHTS_HELP)
    e.add_argument("--seed", type=int, default=0, help="seed for zoo weights and example input")
    add_config_options(e, "export")  # --opset, --dynamic-batch, --rtol, ...: ExportConfig's fields
    return e


def run(args) -> int:
    from edgeopt.pipeline.steps import STEPS

    config = config_from_args("export", args)  # bad values fail before the model is loaded
    refuse_existing_file_parent(args.out)
    module, x = torch_model(args.model, args.input_shape, args.seed, args.weights)
    result = STEPS["export"].function(module, config, x, out=args.out)
    p = result.metrics["parity"]
    print(f"wrote {result.path} ({result.path.stat().st_size:,} bytes, opset {config.opset})")
    print(f"parity vs torch: max abs {p['max_abs']:.3e}, max rel {p['max_rel']:.3e} "
          f"(tolerance {p['rtol']:g}) -> {'pass' if p['passed'] else 'FAIL'}")
    return 0
