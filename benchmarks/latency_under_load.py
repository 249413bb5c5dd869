"""p50 / p99 latency with and without a bounded background load.

ResNet-18 (zoo, random weights) fp32 and int8 (``edgeopt.compress.quantize``) on onnxruntime,
OpenVINO (when installed) and edgeopt's TVM artifacts (``kernels: auto``, so oneDNN's convs),
each in a worker process of its own (a threading runtime reads its environment once, when it
is loaded, so TVM variants that differ in it cannot share a process). The workers are timed in
turn, round after round, quiet and then under the load (``edgeopt.pipeline.bench.BackgroundLoad``:
N busy-loop processes, each pinned to a core), so every runtime sees the same machine; each
figure pools its rounds. The score is p99 under load over quiet p50: what a co-located process
does to the tail, relative to what the runtime does alone. A p99 rests on a few runs, so each
score is also given against onnxruntime's on the same model with a 90% interval: a bootstrap
that draws whole rounds, the same ones for both runtimes (a round's machine is shared by all).

    .venv/bin/python benchmarks/latency_under_load.py --threads 2 --load 1 --rounds 6 --repeat 40

``--tvm-env NAME:VAR=VALUE,...`` adds a TVM worker with those environment variables set before
anything is loaded (e.g. ``verbose:ONEDNN_VERBOSE=1``), to compare settings; ``--tvm-threads N``
one on N threads. ``--record``
writes the table, the command, the CPU, its flags and the load average into its section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path


SETTLE_S = 0.1  # between two runtimes' timed blocks


def worker(conn, runtime: str, path: str, threads: int, env: dict) -> None:
    """One runner in its own process: answers ``n`` with ``n`` timed runs (ms), ``None`` ends."""
    os.environ.update(env)  # before any library that reads it is loaded

    from edgeopt.runtimes import load

    runner = load(path, runtime=runtime, threads=threads)
    x = runner.example_inputs()
    for _ in range(5):  # primitives created, weights reordered, caches warm
        runner.run(x)
    conn.send("ready")
    while True:
        n = conn.recv()
        if n is None:
            break
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            runner.run(x)  # the whole call, outputs read back: what an application waits for
            samples.append((time.perf_counter() - t0) * 1e3)
        conn.send(samples)
    conn.close()


def build_models(out: Path, log) -> dict:
    """{label: (runtime, path)} for ResNet-18 fp32 and int8 on each runtime."""
    import numpy as np

    import edgeopt.compile as eoc
    import edgeopt.compress as ec
    from edgeopt.pipeline.zoo import create

    models = {}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    if (out / "int8-tvm").is_dir():  # an earlier run's (--models)
        for name in ("fp32", "int8"):
            models.update(runtimes_for(name, out / name, out / f"{name}-tvm"))
        return models
    fp32 = eoc.export(create("resnet18"), eoc.ExportConfig(), x, out=out / "fp32")
    calib = [np.random.default_rng(i).standard_normal(x.shape).astype(np.float32) for i in range(8)]
    int8 = ec.quantize(fp32, ec.QuantizeConfig(method="minmax"), calib, out=out / "int8")
    for name, onnx in (("fp32", fp32), ("int8", int8)):
        log(f"building ResNet-18 {name} with TVM (kernels: auto) ...")
        eoc.build(onnx, eoc.BuildConfig(target="cpu"), out=out / f"{name}-tvm")
        models.update(runtimes_for(name, out / name, out / f"{name}-tvm"))
    return models


def runtimes_for(name: str, onnx: Path, tvm: Path) -> dict:
    models = {f"{name} onnxruntime": ("onnxruntime", str(onnx))}
    try:
        import openvino  # noqa: F401

        models[f"{name} openvino"] = ("openvino", str(onnx))
    except ImportError:
        pass
    models[f"{name} tvm"] = ("tvm", str(tvm))
    return models


def score_against(runtime: dict, reference: dict, draws: int = 2000, seed: int = 0) -> tuple:
    """(point, low, high): ``runtime``'s p99 loaded / p50 quiet over ``reference``'s, with a 90%
    bootstrap interval; each draw takes whole rounds (with replacement), the same for both.

    >>> a = {"quiet": [[1.0, 1.0]] * 4, "loaded": [[2.0, 4.0]] * 4}
    >>> b = {"quiet": [[2.0, 2.0]] * 4, "loaded": [[4.0, 4.0]] * 4}
    >>> score_against(a, b)
    (2.0, 2.0, 2.0)
    """
    import numpy as np

    from edgeopt.runtimes.timing import percentile

    def score(side, rounds):
        quiet = [x for r in rounds for x in side["quiet"][r]]
        loaded = [x for r in rounds for x in side["loaded"][r]]
        return percentile(loaded, 99) / percentile(quiet, 50)

    n = len(runtime["quiet"])
    every = range(n)
    point = score(runtime, every) / score(reference, every)
    picks = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    boot = [score(runtime, p) / score(reference, p) for p in picks]
    low, high = np.quantile(boot, [0.05, 0.95])
    return round(float(point), 6), round(float(low), 6), round(float(high), 6)


def parse_env(spec: str) -> tuple[str, dict]:
    name, _, pairs = spec.partition(":")
    return name, dict(p.split("=", 1) for p in pairs.split(",") if p)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--load", type=int, default=1, help="busy cores while loaded")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeat", type=int, default=40, help="timed runs per worker per round and phase")
    p.add_argument("--models", default=None, help="a folder with fp32/int8 artifacts from an earlier run")
    p.add_argument("--tvm-env", action="append", default=[], metavar="NAME:VAR=VALUE,...")
    p.add_argument("--tvm-threads", type=int, action="append", default=[], metavar="N",
                   help="adds a TVM worker on N threads (TVM's pool and oneDNN's TBB arena)")
    p.add_argument("--only", default=None, help="fp32 or int8")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)

    from edgeopt.pipeline.bench import BackgroundLoad
    from edgeopt.runtimes.timing import percentile

    def log(s):
        print(s, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="edgeopt-load-") as tmp:
        models = build_models(Path(args.models or tmp), log)
        if args.only:
            models = {k: v for k, v in models.items() if k.startswith(args.only)}
        specs = []
        for label, (runtime, path) in models.items():
            specs.append((label, runtime, path, {}, args.threads))
            if runtime == "tvm":
                for extra in args.tvm_env:
                    name, env = parse_env(extra)
                    specs.append((f"{label} {name}", runtime, path, env, args.threads))
                for n in args.tvm_threads:
                    specs.append((f"{label} {n} thread{'s' if n > 1 else ''}", runtime, path, {}, n))
        ctx = mp.get_context("spawn")
        workers, procs = {}, []
        try:
            for label, runtime, path, env, threads in specs:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker, args=(child, runtime, path, threads, env), daemon=True)
                proc.start()
                procs.append(proc)
                workers[label] = parent
            for label, conn in workers.items():
                assert conn.recv() == "ready", label
            samples = {label: {"quiet": [], "loaded": []} for label in workers}
            load_line = ""
            order = list(workers)
            for r in range(args.rounds):
                for phase in ("quiet", "loaded"):
                    load = BackgroundLoad(args.load) if phase == "loaded" else None
                    if load:
                        load.__enter__()
                        load_line = load.describe()
                    try:
                        for label in order:
                            # the runtime timed before may still spin its idle threads for a few
                            # ms: a load that is not the one measured
                            time.sleep(SETTLE_S)
                            workers[label].send(args.repeat)
                            samples[label][phase].append(workers[label].recv())
                    finally:
                        if load:
                            load.stop()
                order = order[1:] + order[:1]  # nobody always runs first after the load starts
                log(f"round {r + 1}/{args.rounds} done; load average {os.getloadavg()[0]:.1f}")
        finally:
            for conn in workers.values():
                try:
                    conn.send(None)
                except OSError:
                    pass
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    rows = ["| model / runtime | p50 quiet (ms) | p99 quiet (ms) | p50 loaded (ms) | p99 loaded (ms) "
            "| p99 loaded / p50 quiet | that / onnxruntime's (90% interval) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, s in samples.items():
        quiet, loaded = sum(s["quiet"], []), sum(s["loaded"], [])
        q50, q99 = percentile(quiet, 50), percentile(quiet, 99)
        l50, l99 = percentile(loaded, 50), percentile(loaded, 99)
        reference = f"{label.split()[0]} onnxruntime"
        versus = "-"
        if reference in samples and reference != label:
            point, low, high = score_against(s, samples[reference])
            versus = f"{point:.2f} ({low:.2f}-{high:.2f})"
        rows.append(f"| {label} | {q50:.3f} | {q99:.3f} | {l50:.3f} | {l99:.3f} | {l99 / q50:.1f}x | {versus} |")
    table = "\n".join(rows)
    print(table)
    print(f"load: {load_line}; {args.rounds} rounds x {args.repeat} runs per phase; "
          f"load average at the end {os.getloadavg()}")
    if args.record:
        sys.path.insert(0, str(Path(__file__).parent))
        from results import record

        record("latency-under-load",
               "Latency under load: how much does a busy core slow each runtime (p50 quiet, p99 loaded)?",
               table, f"ResNet-18, {args.threads} threads; {args.rounds} rounds x {args.repeat} runs per "
               f"phase, quiet then under {load_line}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
