"""The ``edgeopt`` command line (DESIGN.md "CLI contract").

Exit codes: 0 success; 1 a check failed (parity above tolerance); 2 bad input or usage, with a
message on stderr naming the file, field or op and what was expected.

Example:
    $ edgeopt demo --out build/demo
    $ edgeopt export zoo:resnet18 --out build/resnet18.onnx
    $ edgeopt bench build/resnet18.onnx --runtime onnxruntime --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from edgeopt.core.errors import CheckFailed, InputError

EPILOG = "exit codes: 0 success, 1 a check failed, 2 bad input or usage"


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeopt", epilog=EPILOG,
        description="Take a PyTorch model to a compressed, compiled and measured artifact.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", epilog=EPILOG, help="run the built-in digits trade-off study",
                       description="Train digits_cnn on scikit-learn's digits and run the built-in study "
                       "(benchmarks/digits.yaml): fp32, lowrank+kd, pruned+kd, int8 and pruned+kd+int8 on "
                       "torch, onnxruntime and TVM; write report.json, report.md, pareto.png and "
                       "index.html.")
    d.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    d.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for every runtime (default: one per core)")
    d.add_argument("--warmup", type=_nonneg_int, default=None, help="untimed runs first (default: 10)")
    d.add_argument("--repeat", type=_positive_int, default=None, help="timed runs (default: 100)")

    e = sub.add_parser("export", epilog=EPILOG, help="export a torch model to ONNX with a parity check",
                       description="Export MODEL to ONNX, run the ONNX checker and shape inference, "
                       "and compare onnxruntime with torch on the example input. The file is "
                       "written only if the relative error is within --rtol (else exit 1).")
    e.add_argument("model", metavar="MODEL",
                   help="zoo:NAME (digits_cnn, resnet18, mobilenetv2, tiny_vit), "
                   "module.path:factory, or a torch.export .pt2 file")
    e.add_argument("--out", required=True, help="output .onnx file, or a folder for an artifact")
    e.add_argument("--input-shape", default=None,
                   help="example input shape, e.g. 1,3,32,32 (default: the zoo model's)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: 18)")
    e.add_argument("--dynamic-batch", action="store_true", help="make the batch axis symbolic")
    e.add_argument("--rtol", type=float, default=1e-4,
                   help="parity tolerance: max|torch-onnx| / max|torch| (default: 1e-4)")
    e.add_argument("--seed", type=int, default=0, help="seed for zoo weights and example input")

    b = sub.add_parser("bench", epilog=EPILOG, help="time an artifact on a runtime",
                       description="Time ARTIFACT on a runtime and print latency statistics with "
                       "the machine fingerprint. A torch MODEL (zoo:NAME, ...) given with "
                       "--runtime onnxruntime or tvm is exported (and compiled) first.")
    b.add_argument("artifact", metavar="ARTIFACT",
                   help="artifact folder, .onnx or .pt2 file, or a torch MODEL spec")
    b.add_argument("--runtime", default=None,
                   help="torch, onnxruntime, tvm (Python TVM VM) or native (the C++ runner edgeopt-run) "
                   "(default: the one for the artifact's format)")
    b.add_argument("--emulate", choices=["qemu"], default=None,
                   help="native runtime: run an aarch64 artifact under qemu-aarch64 (correctness; the "
                   "timing is labelled emulated, never ARM latency)")
    remote = b.add_mutually_exclusive_group()
    remote.add_argument("--rpc", metavar="HOST:PORT", default=None,
                        help="benchmark a TVM artifact on the TVM RPC server at HOST:PORT")
    remote.add_argument("--tracker", metavar="HOST:PORT", default=None,
                        help="benchmark on a device from the TVM RPC tracker at HOST:PORT (with --key)")
    b.add_argument("--key", default=None, help="device key at the tracker")
    b.add_argument("--all", action="store_true",
                   help="with --tracker: every free device under --key at once, per device and pooled")
    b.add_argument("--reference", default=None,
                   help="with --rpc/--tracker: an .onnx file or artifact to check the remote outputs "
                   "against (default: this host's TVM VM when it can run the artifact)")
    b.add_argument("--threads", type=_positive_int, default=None, help="worker threads")
    b.add_argument("--warmup", type=_nonneg_int, default=10, help="untimed runs first (default: 10)")
    b.add_argument("--repeat", type=_positive_int, default=100, help="timed runs (default: 100)")
    b.add_argument("--input-shape", default=None, help="input shape for a torch MODEL spec")
    b.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
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
    cp.add_argument("--tune-trials", type=_nonneg_int, default=0,
                    help="MetaSchedule trials to have in the tuning database (default: 0, no tuning)")
    cp.add_argument("--bundle", metavar="DIR", default=None,
                    help="also write a deployment bundle: the artifact, the native runner edgeopt-run "
                    "for the target's CPU and the TVM runtime libraries (copy it to a board and run)")
    cp.add_argument("--tracker", metavar="HOST:PORT", default=None,
                    help="measure tuning candidates on the devices of this TVM RPC tracker (with --key)")
    cp.add_argument("--key", default=None, help="device key at the tracker, for --tracker")
    cp.add_argument("--tune-timeout", type=float, default=None,
                    help="stop tuning after this many seconds; what was measured is kept")
    cp.add_argument("--tuning-db", default=None,
                    help="tuning database folder (default: ~/.cache/edgeopt/tuning/<model>-<target>)")

    r = sub.add_parser("run", epilog=EPILOG, help="run a whole trade-off study from a recipe",
                       description="Run every variant of RECIPE on every target and write report.json, "
                       "report.md, pareto.png and index.html into --out. Progress is kept in "
                       "state.json: re-running after an interrupt resumes without redoing finished "
                       "variants.")
    r.add_argument("recipe", metavar="RECIPE.yaml")
    r.add_argument("--out", default=None, help="output folder (default: build/<recipe name>)")
    r.add_argument("--nproc", type=_positive_int, default=1,
                   help="processes for the distill steps (torchrun, DistributedDataParallel; default 1)")

    k = sub.add_parser("check", epilog=EPILOG, help="CI gate: compare a report with a baseline",
                       description="Compare REPORT with BASELINE variant by variant: latency as the ratio "
                       "to the run's reference variant, size in bytes, accuracy in points. Exit 1 on "
                       "a regression beyond the limits, 0 otherwise, 2 on bad input.")
    k.add_argument("report", metavar="REPORT.json")
    k.add_argument("--baseline", required=True, metavar="BASE.json")
    k.add_argument("--max-latency-regression", type=float, default=0.10,
                   help="allowed growth of the latency ratio, as a fraction (default: 0.10)")
    k.add_argument("--max-size-regression", type=float, default=0.01,
                   help="allowed growth of the size, as a fraction (default: 0.01)")
    k.add_argument("--max-accuracy-drop", type=float, default=0.005,
                   help="allowed top-1 drop, as a fraction (default: 0.005 = 0.5 points)")

    c = sub.add_parser("compress", epilog=EPILOG, help="apply one compression step",
                       description="Apply one compression step to a model and write the result.")
    steps = c.add_subparsers(dest="step", required=True, metavar="STEP")
    q = steps.add_parser("quantize", epilog=EPILOG, help="int8 post-training quantization of an ONNX model",
                         description="Quantize an ONNX model (file or artifact folder) to int8 with "
                         "onnxruntime.quantization: calibrated static QDQ (default) or dynamic. With "
                         "--max-accuracy-drop or --min-agreement, the most sensitive compute nodes are "
                         "kept in float until the budget holds on --eval-data.")
    q.add_argument("model", metavar="MODEL.onnx", help="fp32 ONNX file or artifact folder")
    q.add_argument("--out", required=True, help="output .onnx file, or a folder for an artifact")
    q.add_argument("--calibration-data", default=None, metavar="task:digits|FILE.npy",
                   help="calibration inputs: a built-in task's calibration split, or a .npy array "
                   "of samples (N, ...) matching the model input (required for --mode static)")
    q.add_argument("--mode", default="static", choices=["static", "dynamic"])
    q.add_argument("--method", default="entropy", choices=["minmax", "entropy", "percentile"],
                   help="activation calibration (default: entropy)")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    q.add_argument("--activation-type", default="uint8", choices=["uint8", "int8"],
                   help="uint8 (default) is the fast pairing with int8 weights on x86")
    q.add_argument("--format", default="qdq", choices=["qdq", "qoperator"])
    q.add_argument("--max-accuracy-drop", type=float, default=None,
                   help="largest top-1 drop allowed on --eval-data, as a fraction (0.005 = 0.5 points)")
    q.add_argument("--min-agreement", type=float, default=None,
                   help="smallest top-1 agreement with fp32 allowed on --eval-data, e.g. 0.99")
    q.add_argument("--eval-data", default=None, metavar="task:digits|FILE.npy",
                   help="data the budget is measured on: a task's validation split (with labels), "
                   "or a .npy of inputs (agreement only)")
    lr = steps.add_parser("lowrank", epilog=EPILOG, help="low-rank factorization of a torch model",
                          description="Factorize Linear layers (SVD) and convolutions (Tucker-2 or CP) of "
                          "MODEL, export the result (parity-checked) and write it as an ONNX artifact "
                          "folder whose manifest records ranks, skipped layers and FLOPs/params.")
    _torch_step_args(lr)
    sel = lr.add_mutually_exclusive_group(required=True)
    sel.add_argument("--energy", type=float, help="keep this fraction of the spectrum's energy, (0, 1]")
    sel.add_argument("--rank-ratio", type=float, help="keep this fraction of each layer's rank, (0, 1]")
    sel.add_argument("--flops-budget", type=float, help="target FLOPs as a fraction of the original, (0, 1)")
    sel.add_argument("--params-budget", type=float, help="target params as a fraction of the original, (0, 1)")
    lr.add_argument("--method", default="tucker", choices=["tucker", "cp"], help="for kxk convolutions")
    lr.add_argument("--energy-on", default="weights", choices=["weights", "responses"],
                    help="rank from the weights' spectrum or from the layers' responses on "
                    "--calibration-data (default: weights)")
    lr.add_argument("--calibration-data", default=None, metavar="task:digits|FILE.npy",
                    help="inputs for --energy-on responses and for the budget search")
    pr = steps.add_parser("prune", epilog=EPILOG, help="structured or unstructured pruning of a torch model",
                          description="Prune MODEL (channels physically removed by default), export the "
                          "result (parity-checked) and write it as an ONNX artifact folder.")
    _torch_step_args(pr)
    pr.add_argument("--amount", type=float, required=True, help="fraction to remove, [0, 1)")
    pr.add_argument("--unstructured", action="store_true", help="zero single weights instead of channels")
    pr.add_argument("--norm", default="l1", choices=["l1", "l2"])
    pr.add_argument("--scope", default="global", choices=["global", "local"])
    return p


def _torch_step_args(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="zoo:NAME, module.path:factory or a .pt2 file")
    parser.add_argument("--out", required=True, help="output artifact folder (ONNX + manifest)")
    parser.add_argument("--input-shape", default=None, help="example input shape, e.g. 1,3,224,224")


def _load_samples(spec: str | None, split: str):
    """``task:NAME`` -> that task's split; ``FILE.npy`` -> the array (never unpickled)."""
    import numpy as np

    if spec is None:
        return None
    if spec.startswith("task:"):
        from .tasks import load_task

        return getattr(load_task(spec[5:]), split)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data file {spec!r} does not exist")
    if path.suffix != ".npy":
        raise InputError(f"data {spec!r}: expected task:NAME or a .npy file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"data file {spec!r} is not a plain numpy array: {e}") from None


def cmd_compress(args) -> int:
    if args.step in ("lowrank", "prune"):
        return _torch_step(args)
    from edgeopt.compress import QuantizeConfig, quantize

    config = QuantizeConfig(
        mode=args.mode, calibration=args.method, per_channel=not args.per_tensor,
        activation_type=args.activation_type, format=args.format,
        max_accuracy_drop=args.max_accuracy_drop, min_agreement=args.min_agreement)
    calibration = _load_samples(args.calibration_data, "calib")
    eval_data = _load_samples(args.eval_data, "val")
    history = []
    if Path(args.model).is_dir():
        from edgeopt.runtimes import load_artifact

        history = load_artifact(args.model).history
    result = quantize(args.model, calibration, config, args.out, eval_data=eval_data,
                      history=history, progress=lambda line: print(line, file=sys.stderr))
    m = result.record["metrics"]
    print(f"wrote {result.path}: {m['size_bytes_before']:,} -> {m['size_bytes_after']:,} bytes "
          f"({m['size_ratio']:.2f}x), {m['compute_nodes_quantized']}/{m['compute_nodes_total']} "
          f"compute nodes int8")
    if m["nodes_in_float"]:
        print("kept in float: " + ", ".join(m["nodes_in_float"]))
    return 0


def _torch_step(args) -> int:
    import edgeopt.compress as ec
    from edgeopt.compile import export

    from .models import load_model, parse_shape

    loaded = load_model(args.model)
    shape = parse_shape(args.input_shape) if args.input_shape else loaded.input_shape
    if shape is None:
        raise InputError(f"model {args.model!r} does not say its input shape; pass --input-shape")
    x = _example_input(shape, 0)
    if args.step == "lowrank":
        config = ec.LowRankConfig(rank_ratio=args.rank_ratio, energy=args.energy,
                                  flops_budget=args.flops_budget, params_budget=args.params_budget,
                                  method=args.method, energy_on=args.energy_on)
        calibration = _load_samples(args.calibration_data, "calib")
        if calibration is not None and hasattr(calibration, "x"):
            calibration = calibration.x
        model = ec.lowrank(loaded.module, config, x, calibration=calibration).output
    else:
        config = ec.PruneConfig(amount=args.amount, structured=not args.unstructured,
                                norm=args.norm, scope=args.scope)
        model = ec.prune(loaded.module, config, x).output
    m = ec.last_record(model)["metrics"]
    result = export(model, x, args.out)
    print(f"{args.step}: params {m['params_before']:,} -> {m['params_after']:,} "
          f"({m['params_before'] / max(m['params_after'], 1):.2f}x fewer), FLOPs {m['flops_before']:,} -> "
          f"{m['flops_after']:,} ({m['flops_before'] / max(m['flops_after'], 1):.2f}x fewer)")
    for entry in m.get("skipped", []) + m.get("left_whole", []):
        print(f"  left alone: {entry.get('layer') or ', '.join(entry.get('layers', []))}: {entry['reason']}")
    print(f"wrote {result.path} (parity max rel {result.parity.max_rel:.1e})")
    return 0


def cmd_compile(args) -> int:
    from edgeopt.compile.tvm_build import build

    model, history = Path(args.model), []
    if model.is_dir():
        from edgeopt.runtimes import load_artifact

        art = load_artifact(model)
        if art.format != "onnx":
            raise InputError(f"compile needs an ONNX model; {args.model!r} is a {art.format} artifact")
        model, history = art.model_file, art.history
    if args.bundle and Path(args.bundle).exists():
        raise InputError(f"--bundle {args.bundle!r} already exists; choose a new folder")
    if bool(args.tracker) != bool(args.key):
        raise InputError("--tracker and --key go together (tuning measured on the tracker's devices)")
    if args.tracker and not args.tune_trials:
        raise InputError("--tracker is for tuning; give --tune-trials N as well")
    tune = None
    if args.tune_trials or args.tuning_db:
        from edgeopt.compile import TuneConfig

        tune = TuneConfig(trials=args.tune_trials, timeout_s=args.tune_timeout, db=args.tuning_db,
                          tracker=args.tracker, key=args.key)
    art = build(model, target=args.target, out=args.out, history=history,
                int8=False if args.no_int8 else None, tune=tune,
                log=lambda line: print(line, file=sys.stderr))
    last = art.history[-1]
    print(f"wrote {art.path} ({art.size_bytes():,} bytes) for {json.dumps(last['config']['target'])}"
          + (f"; {last['metrics']['int8_ops']} ops in int8" if last["metrics"].get("int8_ops") else ""))
    if args.bundle:
        from edgeopt.compile.bundle import make_bundle

        bundle = make_bundle(art, args.bundle, log=lambda line: print(line, file=sys.stderr))
        run_line = next(ln.strip() for ln in (bundle / "README.txt").read_text().splitlines()
                        if ln.strip().startswith("./edgeopt-run"))
        print(f"wrote the deployment bundle {bundle}; on the device: cd {bundle.name} && {run_line}")
    return 0


def cmd_run(args) -> int:
    from .recipe import load_recipe
    from .run import run_recipe

    recipe = load_recipe(args.recipe)
    out = args.out or str(Path("build") / Path(args.recipe).stem)
    run_recipe(recipe, out, nproc=args.nproc)
    print(f"wrote {out}/report.json, report.md, pareto.png and index.html")
    return 0


def cmd_check(args) -> int:
    from .gate import Thresholds, compare, format_rows, load_report

    t = Thresholds(args.max_latency_regression, args.max_size_regression, args.max_accuracy_drop)
    rows = compare(load_report(args.report), load_report(args.baseline, "baseline"), t)
    print(format_rows(rows, t))
    bad = [r for r in rows if r["regressions"]]
    if bad:
        raise CheckFailed(f"{len(bad)} of {len(rows)} variants regressed: "
                          + ", ".join(r["variant"] for r in bad))
    print(f"no regression in {len(rows)} variants")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, threads=args.threads, warmup=args.warmup, repeat=args.repeat)
    return 0


def _example_input(shape: tuple, seed: int):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def cmd_export(args) -> int:
    from edgeopt.compile import ExportConfig, export

    from .models import load_model, parse_shape

    config = ExportConfig(opset=args.opset, dynamic_batch=args.dynamic_batch, rtol=args.rtol)
    loaded = load_model(args.model, seed=args.seed)
    shape = parse_shape(args.input_shape) if args.input_shape else loaded.input_shape
    if shape is None:
        raise InputError(f"model {args.model!r} does not say its input shape; pass --input-shape")
    result = export(loaded.module, _example_input(shape, args.seed), args.out, config)
    p = result.parity
    print(f"wrote {result.path} ({result.path.stat().st_size:,} bytes, opset {config.opset})")
    print(f"parity vs torch: max abs {p.max_abs:.3e}, max rel {p.max_rel:.3e} "
          f"(tolerance {p.rtol:g}) -> {'pass' if p.passed else 'FAIL'}")
    return 0


def cmd_bench(args) -> int:
    from edgeopt.runtimes import check_runtime, load

    from .models import FILE_SUFFIXES

    if args.runtime is not None:
        check_runtime(args.runtime)
    spec = args.artifact
    torch_spec = spec.startswith("zoo:") or (
        ":" in spec and not os.path.exists(spec) and not spec.endswith(FILE_SUFFIXES))
    if args.tracker or args.rpc:
        return _bench_remote(args)
    if args.key or args.all or args.reference:
        raise InputError("--key, --all and --reference go with --tracker/--rpc")
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        if torch_spec:
            runner = _runner_for_torch_spec(args, Path(tmp))
        else:
            path = Path(spec)
            if args.runtime == "tvm" and path.suffix == ".onnx":
                from edgeopt.compile.tvm_build import build

                print(f"compiling {spec} with TVM for the host CPU (untuned) ...", file=sys.stderr)
                art = build(path, target="cpu", out=Path(tmp) / "tvm")
                runner = load(art, runtime="tvm", threads=args.threads)
            else:
                options = {"emulate": args.emulate} if args.emulate else {}
                if args.emulate and args.runtime != "native":
                    raise InputError("--emulate qemu needs --runtime native")
                runner = load(path, runtime=args.runtime, threads=args.threads, **options)
        result = runner.benchmark(runner.example_inputs(), warmup=args.warmup, repeat=args.repeat)
    _print_result(result)
    if args.json_out:
        from edgeopt.core.files import write_json_atomic

        write_json_atomic(args.json_out, {"artifact": spec, **result.to_dict()})
    return 0


def _print_result(result) -> None:
    lat = result.latency
    m = result.machine
    print(f"runtime {result.runtime}: median {lat.median_ms:.3f} ms, p90 {lat.p90_ms:.3f} ms, "
          f"min {lat.min_ms:.3f} ms, stdev {lat.stdev_ms:.3f} ms, n {lat.n}")
    if "device" in m:
        print(f"device: {m['device']} (via {m['via']}), {m['threads'] or 'default'} threads")
    else:
        print(f"machine: {m['cpu']}, {m['threads']} threads; "
              + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if m.get("emulated"):
        print(f"EMULATED: {m['emulated']}")


def _bench_remote(args) -> int:
    """--rpc / --tracker [--all]: run on remote devices, check outputs, report per device."""
    import numpy as np

    from edgeopt.runtimes import load_artifact
    from edgeopt.core.files import write_json_atomic
    from edgeopt.runtimes.base import example_inputs
    from edgeopt.runtimes.rpc import RpcRunner, benchmark_fleet, connect_server, request_device

    if args.runtime not in (None, "tvm"):
        raise InputError("--rpc/--tracker run TVM artifacts; drop --runtime or use --runtime tvm")
    if args.emulate:
        raise InputError("--emulate is for the native runtime on this host, not for --rpc/--tracker")
    if args.tracker and not args.key:
        raise InputError("--tracker needs --key (the device key the servers registered under)")
    if args.all and not args.tracker:
        raise InputError("--all needs --tracker and --key")
    path = Path(args.artifact)
    if not path.is_dir():
        raise InputError(f"{args.artifact!r}: remote benchmarking takes a TVM artifact folder "
                         "(edgeopt compile --target ...)")
    art = load_artifact(path)
    x = example_inputs(art.inputs, 0)
    reference = _reference_outputs(args, art, x)
    if args.all:
        fleet = benchmark_fleet(art, args.tracker, args.key, x, warmup=args.warmup, repeat=args.repeat,
                                threads=args.threads, log=lambda s: print(s, file=sys.stderr))
        for name, result in fleet.devices.items():
            _print_result(result)
            _print_parity(name, fleet.outputs[name], reference, np)
        for name, reason in fleet.lost.items():
            print(f"LOST device {name}: {reason}")
        if fleet.pooled:
            p = fleet.pooled
            print(f"pooled over {len(fleet.devices)} device(s): median {p.median_ms:.3f} ms, "
                  f"p90 {p.p90_ms:.3f} ms, min {p.min_ms:.3f} ms, n {p.n}")
        if args.json_out:
            write_json_atomic(args.json_out, {"artifact": args.artifact, **fleet.to_dict()})
        return 0 if fleet.devices else 1
    device = request_device(args.tracker, args.key) if args.tracker else connect_server(args.rpc)
    try:
        runner = RpcRunner(art, device, threads=args.threads)
        outputs = runner.run(x)
        result = runner.benchmark(x, warmup=args.warmup, repeat=args.repeat)
    finally:
        device.close()
    _print_result(result)
    _print_parity(device.name, outputs, reference, np)
    if args.json_out:
        write_json_atomic(args.json_out, {"artifact": args.artifact, **result.to_dict()})
    return 0


def _reference_outputs(args, art, x):
    """Outputs to check remote ones against: --reference, else this host's TVM VM if it can."""
    from edgeopt.runtimes import load

    if args.reference:
        return load(args.reference).run(x)
    try:
        return load(art, runtime="tvm").run(x)
    except InputError as e:  # e.g. an aarch64 artifact on an x86 client
        print(f"parity: not checked ({e}); pass --reference MODEL.onnx", file=sys.stderr)
        return None


def _print_parity(name, outputs, reference, np) -> None:
    if reference is None:
        return
    rel = max(float(np.max(np.abs(o - r))) / max(float(np.max(np.abs(r))), 1e-30)
              for o, r in zip(outputs, reference))
    print(f"parity {name}: max rel {rel:.2e} vs the reference")


def _runner_for_torch_spec(args, tmp: Path):
    """A runner for a torch MODEL spec: eager torch, or exported/compiled on the fly."""
    import torch

    from edgeopt.compile import export
    from edgeopt.runtimes import load
    from edgeopt.runtimes.torch_runner import TorchRunner

    from .models import load_model, parse_shape

    loaded = load_model(args.artifact)
    shape = parse_shape(args.input_shape) if args.input_shape else loaded.input_shape
    if shape is None:
        raise InputError(f"model {args.artifact!r} does not say its input shape; pass --input-shape")
    x = _example_input(shape, 0)
    runtime = args.runtime or "torch"
    if runtime == "torch":
        return TorchRunner(loaded.module, example=[torch.from_numpy(x)], threads=args.threads)
    exported = export(loaded.module, x, tmp / "onnx")
    if runtime == "onnxruntime":
        return load(exported.artifact, threads=args.threads)
    from edgeopt.compile.tvm_build import build

    return load(build(exported.path, target="cpu", out=tmp / "tvm"), threads=args.threads)


COMMANDS = {"demo": cmd_demo, "export": cmd_export, "bench": cmd_bench, "compress": cmd_compress,
            "run": cmd_run, "check": cmd_check, "compile": cmd_compile}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (InputError, FileNotFoundError) as e:
        print(f"edgeopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        print(f"edgeopt {args.command}: check failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        extra = "; finished work is kept in state.json and a re-run resumes" if args.command == "run" else ""
        print(f"edgeopt {args.command}: interrupted{extra}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
