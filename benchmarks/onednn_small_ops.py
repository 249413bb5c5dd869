"""A oneDNN call against TVM's own (untuned) kernel, per conv / matmul size: where ``MIN_FLOPS``
in compile/onednn_offload.py comes from (benchmarks/RESULTS.md, "small ops").

Each op is a model of its own, fp32, built with ``kernels: onednn`` and ``kernels: tvm``; all are
loaded in this one process and timed interleaved, round after round; the figure is the median of the round medians.

    .venv/bin/python benchmarks/onednn_small_ops.py --rounds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeat", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import edgeopt.compile as eoc
    from edgeopt.runtimes import load

    cases = [(f"Linear {k}x{k}", torch.nn.Linear(k, k), (1, k), 2 * k * k) for k in (16, 32, 64, 128, 256, 512)]
    cases += [(f"Conv 3x3 {c}->{c}, {h}x{h}", torch.nn.Conv2d(c, c, 3, padding=1), (1, c, h, h), 2 * c * c * 9 * h * h)
              for c, h in ((8, 8), (16, 8), (16, 16), (32, 16))]
    runners = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-small-ops-") as tmp:
        for i, (name, module, shape, _) in enumerate(cases):
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            onnx = eoc.export(module.eval(), eoc.ExportConfig(), x, out=f"{tmp}/{i}")
            for kernels in ("onednn", "tvm"):
                art = eoc.build(onnx, eoc.BuildConfig(target="cpu", kernels=kernels), out=f"{tmp}/{i}-{kernels}")
                runner = load(art.output, threads=args.threads)
                runners[(name, kernels)] = (runner, runner.example_inputs())
            print(f"built {name}", file=sys.stderr, flush=True)
        medians = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, (runner, x) in runners.items():
                medians[key].append(runner.benchmark(x, warmup=20, repeat=args.repeat).latency.median_ms)
    print("| op | FLOPs | oneDNN (us) | TVM (us) | TVM / oneDNN |\n| --- | ---: | ---: | ---: | ---: |")
    for name, _, _, flops in cases:
        o, t = np.median(medians[(name, "onednn")]) * 1e3, np.median(medians[(name, "tvm")]) * 1e3
        print(f"| {name} | {flops:,} | {o:.1f} | {t:.1f} | {t / o:.2f} |")
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
