"""``edgeopt compress STEP``: one compression step, its options generated from the step's config.

Every field of the step's config (``edgeopt.pipeline.steps``) is an option with the same name
(``-`` for ``_``) and the help text of the config's docstring (``options.py``); an option not given
leaves the config's own default. So the CLI, recipes and the Python API cannot drift apart.
Torch-level steps read a torch MODEL and write an ONNX artifact folder (exported with the parity
check); ``quantize`` reads and writes ONNX; ``qat`` reads a torch MODEL and a labelled task
(``--task``), fine-tunes it under fake quantization and writes the quantized ONNX.
"""

from __future__ import annotations

from edgeopt.core.errors import InputError

from .common import (EPILOG, INPUT_SHAPE_HELP, WEIGHTS_HELP, accept_debug_after, list_zoo_in_help, load_samples,
                     refuse_existing_file_parent, say, torch_model)
from .options import add_config_options, config_from_args

#: Steps offered on the command line (distill needs a teacher and training data: recipes).
CLI_STEPS = ("lowrank", "prune", "quantize", "qat")


def add_parser(sub):
    from edgeopt.pipeline.steps import STEPS

    c = sub.add_parser("compress", epilog=EPILOG, help="apply one compression step",
                       description="Apply one compression step to a model and write the result. "
                       "The options of each step are the fields of its config, the same names a "
                       "recipe uses.")
    steps = c.add_subparsers(dest="step", required=True, metavar="STEP")
    for name in CLI_STEPS:
        kind = STEPS[name]
        p = steps.add_parser(name, epilog=EPILOG, help=kind.summary, description=kind.summary + ".")
        if kind.level == "torch-to-onnx":
            p.add_argument("model", metavar="MODEL", help="zoo:NAME, module.path:factory or a .pt2 file "
                           "(the trained fp32 model; with alpha > 0 it is also the teacher)")
            p.add_argument("--out", required=True, help="output .onnx file, or a folder for an artifact")
            p.add_argument("--task", required=True, help="built-in labelled task to train on (e.g. digits)")
            p.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,224,224")
            p.add_argument("--calibration-data", default=None, metavar="task:NAME|FILE.npy",
                           help="samples that initialize the ranges (default: the task's calibration split)")
        elif kind.level == "torch":
            list_zoo_in_help(p.add_argument("model", metavar="MODEL", help="zoo:NAME (%(zoo)s), "
                                            "module.path:factory or a .pt2 file"))
            p.add_argument("--out", required=True, help="output artifact folder (ONNX + manifest)")
            p.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,224,224")
            p.add_argument("--weights", default=None, metavar="FILE.pth", help=WEIGHTS_HELP)
            p.add_argument("--calibration-data", default=None, metavar="task:NAME|FILE.npy|FILE.npz",
                           help="inputs for data-driven choices (lowrank responses, budget searches): "
                           "a task's calibration split, a .npy of samples or a task .npz (x, y)")
        else:
            p.add_argument("model", metavar="MODEL.onnx", help="fp32 ONNX file or artifact folder")
            p.add_argument("--out", required=True, help="output .onnx file, or a folder for an artifact")
            p.add_argument("--calibration-data", default=None, metavar="task:NAME|FILE.npy|FILE.npz",
                           help="calibration inputs: a built-in task's calibration split, a .npy "
                           "array of samples (N, ...) matching the model input, a .npz with one "
                           "such array per model input, named as the inputs (static mode), or a "
                           "task's .npz (x, y: its calibration split)")
            p.add_argument("--eval-data", default=None, metavar="task:NAME|FILE.npy",
                           help="data a budget (max-accuracy-drop, min-agreement) is measured on: a "
                           "task's validation split (with labels), or a .npy of inputs (agreement only)")
            p.add_argument("--input-shape", action="append", default=None, metavar="[NAME=]1,3,H,W",
                           help=INPUT_SHAPE_HELP)
        add_config_options(p, name)
        accept_debug_after(p)  # edgeopt compress quantize ... --debug
        p.set_defaults(func=run)
    return c


def run(args) -> int:
    config = config_from_args(args.step, args)  # bad values fail before the model is loaded
    refuse_existing_file_parent(args.out)  # and an --out that cannot be written
    if args.step == "quantize":
        return _quantize(args, config)
    if args.step == "qat":
        return _qat(args, config)
    return _torch_step(args, config)


def _quantize(args, config) -> int:
    from edgeopt.pipeline.steps import STEPS

    if config.has_budget and args.eval_data is None:
        raise InputError("--max-accuracy-drop / --min-agreement need --eval-data to measure against")
    if config.max_accuracy_drop is not None and args.eval_data and not args.eval_data.startswith("task:"):
        raise InputError("--max-accuracy-drop needs labels: give --eval-data task:NAME, or use "
                         "--min-agreement with a .npy of inputs")
    if config.mode == "static" and args.calibration_data is None:
        raise InputError("static quantization needs --calibration-data (task:NAME, FILE.npy or FILE.npz); "
                         "or use --mode dynamic")
    calibration = load_samples(args.calibration_data, "calib", inputs_by_name=True)
    if args.eval_data and args.eval_data.startswith("task:"):
        from edgeopt.pipeline.tasks import load_task

        from edgeopt.pipeline.steps import quantize_eval_data

        # the task's validation split, judged by its metric or its declared outputs
        eval_data = quantize_eval_data(load_task(args.eval_data[5:]))
    else:
        eval_data = load_samples(args.eval_data, "val")
    result = STEPS["quantize"].function(args.model, config, calibration, out=args.out, eval_data=eval_data,
                                         progress=say, input_shape=args.input_shape)
    m = result.metrics
    print(f"wrote {result.path}: {m['size_bytes_before']:,} -> {m['size_bytes_after']:,} bytes "
          f"({m['size_ratio']:.2f}x), {m['summary']}")
    for a in m.get("attempts", []):
        how = ("+".join(a["transforms"]) or "plain") + (", scope compute" if a.get("scope") == "compute" else "")
        if "metric" in a:  # a regression or embedding task: its metric, and cosine to fp32
            print(f"  tried {a['method']} ({how}): {a['metric']} {a['value']:.4g} (fp32 {a['fp32_value']:.4g}), "
                  f"cosine to fp32 {a['agreement']:.4f}")
            continue
        acc = f"accuracy {a['accuracy'] * 100:.2f}%, " if "accuracy" in a else ""
        print(f"  tried {a['method']} ({how}): {acc}agreement {a['agreement'] * 100:.2f}%")
    if m.get("transforms"):
        print("transforms: " + ", ".join(m["transforms"]))
    if m["nodes_in_float"]:
        print("kept in float: " + ", ".join(m["nodes_in_float"]))
    if m.get("layers"):
        from edgeopt.compress.quant_debug import format_layers

        # (what the named layers remove together was printed with the progress)
        print(f"costliest quantized layers ({len(m['layers'])} measured on calibration data):")
        for line in format_layers(m["layers"], config.debug_layers):
            print(line)
    return 0


def _qat(args, config) -> int:
    import copy

    from edgeopt.pipeline.steps import STEPS
    from edgeopt.pipeline.tasks import load_task

    task = load_task(args.task)  # an unknown task fails before the model is built
    if not task.labelled:
        raise InputError(f"qat trains on labels; task {args.task!r} has none")
    module, x = torch_model(args.model, args.input_shape)
    if tuple(x.shape[1:]) != tuple(task.input_shape[1:]):
        raise InputError(f"task {args.task!r} has inputs of shape {tuple(task.input_shape)}; the model "
                         f"takes {tuple(x.shape)} (give --input-shape or a model for this task)")
    calibration = load_samples(args.calibration_data, "calib")
    calibration = task.calib.x if calibration is None else getattr(calibration, "x", calibration)
    teacher = copy.deepcopy(module).eval() if config.alpha > 0 else None
    result = STEPS["qat"].function(module, config, task, teacher=teacher, calibration=calibration,
                                   example_inputs=x, out=args.out, progress=say)
    m = result.metrics
    line = f"wrote {result.path}: {m['layers_with_learned_scales']} layers with learned int8 scales"
    if "int8_val_accuracy" in m:
        line += f", validation accuracy {m['int8_val_accuracy'] * 100:.2f}% (int8, onnxruntime)"
    print(line)
    if m["layers_calibrated"]:
        print("calibrated instead: " + ", ".join(m["layers_calibrated"]))
    return 0


def _torch_step(args, config) -> int:
    from edgeopt.pipeline.steps import STEPS, make_config

    module, x = torch_model(args.model, args.input_shape, weights=args.weights)
    calibration = load_samples(args.calibration_data, "calib")
    if calibration is not None and hasattr(calibration, "x"):
        calibration = calibration.x
    result = STEPS[args.step].function(module, config, x, calibration=calibration, progress=say)
    m = result.metrics
    exported = STEPS["export"].function(result, make_config("export", {}), x, out=args.out)
    if m.get("engine") == "unstructured":
        # zeros inside the weights: the counts of params and FLOPs do not move, the sparsity does
        print(f"{args.step}: {m['overall_sparsity'] * 100:.1f}% of the prunable weights set to zero "
              f"(unstructured; params and FLOPs are counted dense: {m['params_after']:,}, "
              f"{m['flops_after']:,})")
    elif "params_before" in m:
        print(f"{args.step}: params {m['params_before']:,} -> {m['params_after']:,} "
              f"({m['params_before'] / max(m['params_after'], 1):.2f}x fewer), FLOPs {m['flops_before']:,} -> "
              f"{m['flops_after']:,} ({m['flops_before'] / max(m['flops_after'], 1):.2f}x fewer)")
    for entry in m.get("skipped", []) + m.get("left_whole", []):
        print(f"  left alone: {entry.get('layer') or ', '.join(entry.get('layers', []))}: {entry['reason']}")
    p = exported.metrics["parity"]
    print(f"wrote {exported.artifact.path} (parity max rel {p['max_rel']:.1e})")
    return 0


