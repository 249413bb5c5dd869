"""``edgeopt bench``: time an artifact on a runtime.

Time ARTIFACT on a runtime and print latency statistics with the machine fingerprint. A torch MODEL
(zoo:NAME, ...) given with --runtime onnxruntime or tvm is exported (and compiled) first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeopt.core.errors import InputError

from .common import WEIGHTS_HELP, add_command, nonneg_int, positive_int, refuse_existing_file_parent, say


def add_parser(sub):
    b = add_command(sub, __doc__, run)
    b.add_argument("artifact", metavar="ARTIFACT",
                   help="artifact folder, .onnx or .pt2 file, or a torch MODEL spec")
    b.add_argument("--runtime", default=None,
                   help="torch, onnxruntime, openvino (the openvino extra), tvm (Python TVM VM) or native (the C++ runner edgeopt-run) "
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
    b.add_argument("--threads", type=positive_int, default=None, help="worker threads")
    b.add_argument("--warmup", type=nonneg_int, default=10, help="untimed runs first (default: 10)")
    b.add_argument("--repeat", type=positive_int, default=100, help="timed runs (default: 100)")
    b.add_argument("--input-shape", action="append", default=None, metavar="[NAME=]1,3,H,W",
                   help="input shape for a torch MODEL spec; for an ONNX model or artifact with "
                   "dynamic dimensions, the concrete shape to time (NAME=... once per input for several)")
    b.add_argument("--weights", default=None, metavar="FILE.pth", help="with a torch MODEL spec: " + WEIGHTS_HELP)
    b.add_argument("--load", type=positive_int, default=None, metavar="N",
                   help="also time under a background load: N busy-loop processes, each pinned to a core "
                   "of its own (the last cores), started after the quiet timing and ended when the "
                   "loaded one ends (also on Ctrl-C); prints quiet and loaded p50/p99 side by side")
    b.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    return b


def run(args) -> int:
    from edgeopt.core.files import write_json_atomic
    from edgeopt.pipeline.bench import BackgroundLoad, bench_inputs, is_torch_spec, open_runner

    if args.json_out:  # checked before the timing, not after it
        refuse_existing_file_parent(args.json_out, "--json")
    if args.tracker or args.rpc:
        if args.load:
            raise InputError("--load times on this machine; it does not go with --rpc/--tracker")
        return _remote(args)
    if args.key or args.all or args.reference:
        raise InputError("--key, --all and --reference go with --tracker/--rpc")
    load = BackgroundLoad(args.load) if args.load else None  # N checked before any work
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        runner = open_runner(args.artifact, args.runtime, args.threads, Path(tmp),
                             input_shape=args.input_shape, emulate=args.emulate, progress=say,
                             weights=args.weights)
        shape = None if is_torch_spec(args.artifact) else args.input_shape  # a torch MODEL's: used above
        x = bench_inputs(runner, shape)
        result = runner.benchmark(x, warmup=args.warmup, repeat=args.repeat)
        loaded = None
        if load is not None:
            say(f"timing again under {load.describe()} ...")
            with load:
                loaded = runner.benchmark(x, warmup=args.warmup, repeat=args.repeat)
    print_result(result)
    extra = {}
    if loaded is not None:
        extra = {"under_load": under_load(result, loaded, load)}
        print_under_load(extra["under_load"])
    if args.json_out:
        write_json_atomic(args.json_out, {"artifact": args.artifact, **result.to_dict(), **extra})
    return 0


def under_load(quiet, loaded, load) -> dict:
    """Quiet and loaded p50/p99 side by side, and the loaded p99 over the quiet p50: how much of
    the tail a co-located process adds (``None`` where the runner reports no p99)."""
    q, lo = quiet.latency, loaded.latency
    return {"load": load.describe(), "busy_cores": load.n, "pinned": bool(load.cores),
            "quiet": {"p50": q.median_ms, "p99": q.p99_ms},
            "loaded": {"p50": lo.median_ms, "p99": lo.p99_ms, **loaded.latency.to_report()},
            "p99_loaded_over_p50_quiet": None if lo.p99_ms is None else lo.p99_ms / q.median_ms}


def print_under_load(u: dict) -> None:
    def ms(v):
        return "n/a (this runner reports no p99)" if v is None else f"{v:.3f} ms"

    print(f"{'':12}{'p50':>12}{'p99':>12}")
    for phase in ("quiet", "loaded"):
        print(f"{phase:12}{u[phase]['p50']:>9.3f} ms{ms(u[phase]['p99']):>12}")
    ratio = u["p99_loaded_over_p50_quiet"]
    print(f"load: {u['load']}" + ("" if ratio is None else f"; p99 under load / quiet p50: {ratio:.2f}x"))


def print_result(result) -> None:
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


def _remote(args) -> int:
    """--rpc / --tracker [--all]: run on remote devices, check outputs, report per device."""
    from edgeopt.core.files import write_json_atomic
    from edgeopt.pipeline.bench import parity, reference_outputs
    from edgeopt.runtimes import load_artifact
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
    # a note about the reference ("parity: not checked") is said once a device answered: before
    # that, an unreachable server's or tracker's error must be the one line the user sees
    notes: list[str] = []
    reference = reference_outputs(art, x, args.reference, notes.append)

    def show_parity(name, outputs):
        if reference is not None:
            print(f"parity {name}: max rel {parity(outputs, reference):.2e} vs the reference")

    if args.all:
        fleet = benchmark_fleet(art, args.tracker, args.key, x, warmup=args.warmup, repeat=args.repeat,
                                threads=args.threads, progress=say)
        for note in notes:
            say(note)
        for name, result in fleet.devices.items():
            print_result(result)
            show_parity(name, fleet.outputs[name])
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
    for note in notes:
        say(note)
    try:
        runner = RpcRunner(art, device, threads=args.threads)
        outputs = runner.run(x)
        result = runner.benchmark(x, warmup=args.warmup, repeat=args.repeat)
    finally:
        device.close()
    print_result(result)
    show_parity(device.name, outputs)
    if args.json_out:
        write_json_atomic(args.json_out, {"artifact": args.artifact, **result.to_dict()})
    return 0
