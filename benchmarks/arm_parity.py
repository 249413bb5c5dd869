"""Every zoo model built for `arm` (aarch64) and run by the aarch64 native runner under qemu,
against the x86 build on the Python TVM VM.

    .venv/bin/python benchmarks/arm_parity.py [--record]

Reports the library's ELF machine, its size and max|arm - x86| / max|x86| (bar: 1e-4). No
latency: qemu timings are emulation, not ARM latency.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.native_build import runner_binary
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load

from results import make_key, record

ELF_MACHINES = {62: "x86-64", 183: "aarch64"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="arm")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    rows = ["| model | target | library ELF | library KB | max rel diff vs x86 |", "|---|---|---|---|---|"]
    for name in sorted(ZOO):
        x = np.random.default_rng(0).standard_normal(ZOO[name].input_shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export(create(name), ExportConfig(), x, out=Path(tmp) / "m.onnx").path
            x86 = build(onnx_path, BuildConfig(target="cpu"), out=Path(tmp) / "cpu").output
            arm = build(onnx_path, BuildConfig(target=args.target), out=Path(tmp) / "arm").output
            machine = int.from_bytes(arm.model_file.read_bytes()[18:20], "little")
            got = load(arm, runtime="native", emulate="qemu", provide_binary=runner_binary).run(x)[0]
            ref = load(x86, runtime="tvm").run(x)[0]
            rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            rows.append(f"| {name} | {args.target} | {ELF_MACHINES.get(machine, machine)} "
                        f"| {arm.model_file.stat().st_size / 1024:.0f} | {rel:.1e} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.record:
        record(make_key(args.target, "parity"),
               f"Do ARM builds (target {args.target}) compute what the x86 build computes?", table,
               "Run by the aarch64 edgeopt-run under qemu-aarch64 (correctness only; no latency).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
