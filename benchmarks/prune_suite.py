"""Structured pruning on the architecture suite: Torch-Pruning vs edgeopt's tracer, and latency.

    .venv/bin/python benchmarks/prune_suite.py [--amount 0.5] [--threads 2] [--record]

Table 1: every architecture of ``tests/arch_suite.py`` (hand-written ones at twice the unit
tests' widths) pruned by ``amount`` with each engine: params and FLOPs before/after, and the
parity of the exported ONNX (``edgeopt.compile.export``) against torch. An engine that cannot
prune a model consistently is refused (the invariant), shown with its one-line reason.

Table 2: ResNet-18 and MobileNetV2 at 3x224x224 and the ViT-style encoder (width 128), pruned
with ``engine="auto"`` (channel counts free, and rounded to multiples of 8 with ``round_to=8``),
exported as artifacts and timed on onnxruntime in alternating blocks in one run
(``edgeopt.runtimes.load(artifact).benchmark``): latency after/before as a ratio.
Random weights: speed and structure do not depend on training.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from arch_suite import SUITE, build  # noqa: E402

import edgeopt.compress as ec  # noqa: E402
from edgeopt.compile import ExportConfig, export  # noqa: E402
from edgeopt.core.errors import InputError  # noqa: E402
from edgeopt.pipeline.zoo import create  # noqa: E402
from edgeopt.runtimes import load  # noqa: E402

from results import record  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def engine_table(amount: float, tmp: Path) -> list[str]:
    rows = ["| architecture | engine | params before | params after | params ratio | FLOPs before "
            "| FLOPs after | FLOPs ratio | ONNX parity (max rel) | groups left whole / note |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in SUITE:
        model, x = build(name, scale=1 if name in ("digits_cnn", "resnet18", "mobilenetv2") else 2)
        for engine in ("torch_pruning", "edgeopt"):
            t0 = time.perf_counter()
            try:
                r = ec.prune(model, ec.PruneConfig(amount=amount, engine=engine), x)
            except InputError as e:
                rows.append(f"| {name} | {engine} | {ec.count_params(model):,} | - | - | - | - | - | - "
                            f"| refused: {str(e)[:140]} |")
                print(rows[-1], flush=True)
                continue
            m = r.metrics
            try:
                parity = export(r.output, ExportConfig(), x.numpy(), out=tmp / f'{name}-{engine}.onnx').metrics["parity"]
                rel = f"{parity['max_rel']:.1e}"
            except Exception as e:  # a parity failure is a result to show, not a crash
                rel = f"FAIL ({type(e).__name__})"
            note = f"{len(m.get('left_whole', []))} ({time.perf_counter() - t0:.1f} s)"
            rows.append(f"| {name} | {m['engine']} | {m['params_before']:,} | {m['params_after']:,} "
                        f"| {m['params_after'] / m['params_before']:.2f}x | {m['flops_before'] / 1e6:.1f} M "
                        f"| {m['flops_after'] / 1e6:.1f} M | {m['flops_after'] / m['flops_before']:.2f}x "
                        f"| {rel} | {note} |")
            print(rows[-1], flush=True)
    return rows


def latency_table(amount: float, threads: int, repeat: int, tmp: Path) -> list[str]:
    models = {
        "resnet18 (3x224x224)": (create("resnet18"), torch.randn(1, 3, 224, 224)),
        "mobilenetv2 (3x224x224)": (create("mobilenetv2"), torch.randn(1, 3, 224, 224)),
        "vit_encoder (dim 128)": build("vit_encoder", scale=4),
    }
    rows = ["| model | round_to | engine | params ratio | FLOPs ratio | ONNX parity (max rel) "
            "| median ms before | median ms after | latency after/before |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, (model, x) in models.items():
        variants = {"before": (model, None)}
        for round_to in (None, 8):
            r = ec.prune(model, ec.PruneConfig(amount=amount, round_to=round_to), x)
            variants[round_to] = (r.output, r.metrics)
        runners, rel = {}, {}
        for label, (mod, _) in variants.items():
            e = export(mod, ExportConfig(), x.numpy(), out=tmp / f"{name.split()[0]}-{label}")
            runners[label] = load(e.path.parent, runtime="onnxruntime", threads=threads)
            rel[label] = e.metrics["parity"]["max_rel"]
        times = {k: [] for k in runners}
        arr = x.numpy()
        for _ in range(3):  # alternating blocks: drift on a shared machine hits all variants alike
            for label, runner in runners.items():
                times[label].append(runner.benchmark(arr, warmup=5, repeat=repeat).latency.median_ms)
        before = statistics.median(times["before"])
        for round_to in (None, 8):
            m, after = variants[round_to][1], statistics.median(times[round_to])
            rows.append(f"| {name} | {round_to or '-'} | {m['engine']} | {m['params_after'] / m['params_before']:.2f}x "
                        f"| {m['flops_after'] / m['flops_before']:.2f}x | {rel[round_to]:.1e} | {before:.2f} "
                        f"| {after:.2f} | {after / before:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--amount", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        engines = engine_table(args.amount, Path(tmp))
        latency = latency_table(args.amount, args.threads, args.repeat, Path(tmp))
    wall = time.perf_counter() - t0
    body = "\n".join(engines) + "\n\n" + "\n".join(latency) + "\n"
    print(f"(took {wall:.0f} s on {cpu_name()})")
    if args.record:
        record("prune-suite",
               f"Which architectures can structured pruning handle ({args.amount:.0%} of channels): "
               "Torch-Pruning against edgeopt's tracer?", body,
               f"onnxruntime with {args.threads} threads, batch 1, random weights. "
               f"Whole run {wall:.0f} s. \"groups left whole\" counts the record's `left_whole` "
               "entries (the output layer is always one); the row's engine is the one that ran "
               "(a refused engine says why). Latency ratio < 1 means the pruned model is faster.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
