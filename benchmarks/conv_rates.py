"""Per-conv time and MAC rate of a zoo model's int8 build: TVM + oneDNN against OpenVINO, in the model.

Where TVM int8 trails OpenVINO int8 on a CNN, the convs are nearly all of the time; this shows
which ones and by how much. edgeopt's int8 ONNX (the default quantization) is built with
``kernels: onednn`` and run with ``ONEDNN_VERBOSE=1`` (oneDNN prints each primitive's time and
shape); NNCF's int8 ONNX of the same model runs on OpenVINO with ``PERF_COUNT`` (its per-node
times). Convs are matched by shape (in and out channels, kernel, stride, output size), several
convs of one shape averaged; each row gives both times and the rate in GMAC/s (multiply-adds of
the conv over its time). TVM runs in a process of its own, then OpenVINO, on ``--threads``
threads, after a warm-up; the figures are medians over ``--runs`` runs.

    .venv/bin/python benchmarks/conv_rates.py --model resnet18 --threads 2 [--record]

Needs OpenVINO and NNCF (requirements/bench.txt).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

# oneDNN's conv problem descriptor (groups before the batch: g32mb1_ic32oc32_...)
PROBLEM = re.compile(r"(?:g(\d+))?mb\d+_(?:g(\d+))?ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)sh(\d+)dh\d+ph\d+"
                     r"_iw\d+ow(\d+)kw(\d+)sw\d+")


def parse_problem(line: str) -> tuple | None:
    """(ic, oc, groups, kh, kw, stride, oh, ow) of a oneDNN verbose conv line, else None.

    >>> parse_problem("...,g144mb1_ic144oc144_ih56oh56kh3sh1dh0ph1_iw56ow56kw3sw1dw0pw1,0.02")
    (144, 144, 144, 3, 3, 1, 56, 56)
    >>> parse_problem("...,mb1_ic64oc128_ih56oh28kh1sh2dh0ph0_iw56ow28kw1sw2dw0pw0,0.03")
    (64, 128, 1, 1, 1, 2, 28, 28)
    """
    m = PROBLEM.search(line)
    if not m:
        return None
    g_before, g_after, ic, oc, oh, kh, sh, ow, kw = (int(v) if v else None for v in m.groups())
    return ic, oc, g_before or g_after or 1, kh, kw, sh, oh, ow


def conv_key(ic: int, oc: int, groups: int, kh: int, kw: int, stride: int, oh: int, ow: int) -> str:
    """A conv's shape as one label: ``64->128 3x3/2 28x28`` (groups shown when not 1)."""
    g = f" g{groups}" if groups != 1 else ""
    return f"{ic}->{oc}{g} {kh}x{kw}/{stride} {oh}x{ow}"


def macs(ic: int, oc: int, groups: int, kh: int, kw: int, oh: int, ow: int) -> int:
    """Multiply-adds of one conv at batch 1.

    >>> macs(64, 64, 1, 3, 3, 56, 56)
    115605504
    """
    return oh * ow * oc * (ic // groups) * kh * kw


def tvm_times(artifact: str, threads: int, runs: int) -> dict:
    """{conv key: (median ms of one call, convs of that shape, macs)} from oneDNN's verbose output."""
    code = ("from edgeopt.runtimes import load\n"
            f"r = load({artifact!r}, runtime='tvm', threads={threads})\nx = r.example_inputs()\n"
            "for _ in range(10): r.run(x)\nprint('TIMED', flush=True)\n"
            f"for _ in range({runs}): r.run(x)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}).stdout
    times: dict = defaultdict(list)
    work = {}
    for line in out.split("TIMED", 1)[1].splitlines():
        fields = line.split(",")
        if len(fields) < 5 or fields[1] != "exec" or fields[3] != "convolution":
            continue
        problem = parse_problem(line)
        if problem is None:
            continue
        ic, oc, g, kh, kw, sh, oh, ow = problem
        key = conv_key(ic, oc, g, kh, kw, sh, oh, ow)
        times[key].append(float(fields[-1]))
        work[key] = macs(ic, oc, g, kh, kw, oh, ow)
    # each shape ran (its convs x runs) times: the median of one call, times the convs of that shape
    count = {k: len(v) // runs for k, v in times.items()}
    return {k: (statistics.median(v), count[k], work[k]) for k, v in times.items()}


def openvino_times(onnx_path: str, threads: int, runs: int) -> dict:
    """{conv key: (median ms of one call, convs of that shape, macs)} from OpenVINO's PERF_COUNT."""
    import numpy as np
    import onnx
    import openvino as ov

    model = onnx.load(onnx_path)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    shapes.update({o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output})
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = node.input[1]
        while w not in inits and w in producers:  # the weight's DequantizeLinear
            w = producers[w].input[0]
        oc, icg, kh, kw = inits[w]
        g = int(attrs.get("group", 1))
        _, _, oh, ow = shapes[node.output[0]]
        convs[node.name] = (conv_key(icg * g, oc, g, kh, kw, int(attrs.get("strides", [1])[0]), oh, ow),
                            macs(icg * g, oc, g, kh, kw, oh, ow))
    compiled = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(10):
        request.infer({0: x})
    per_node: dict = defaultdict(list)
    for _ in range(runs):
        request.infer({0: x})
        for p in request.profiling_info:
            if p.node_type in ("Convolution", "GroupConvolution") and p.node_name in convs:
                per_node[p.node_name].append(p.real_time.total_seconds() * 1e3)
    times: dict = defaultdict(list)
    for name, samples in per_node.items():
        times[convs[name]].append(statistics.median(samples))
    return {key: (statistics.median(v), len(v), work) for (key, work), v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from kernels_latency import prepare

    with tempfile.TemporaryDirectory(prefix="edgeopt-conv-rates-") as tmp:
        paths = prepare(args.model, Path(tmp), 16, lambda s: print(s, file=sys.stderr, flush=True))
        ours = tvm_times(str(paths["tvm_int8"].artifact.path), args.threads, args.runs)
        theirs = openvino_times(str(paths["nncf"]), args.threads, args.runs)
    rows = ["| conv (in->out, kernel/stride, output) | convs | MMAC each | TVM + oneDNN (ms) | OpenVINO (ms) "
            "| TVM GMAC/s | OpenVINO GMAC/s | TVM / OpenVINO |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total = [0.0, 0.0]
    for key in sorted(ours, key=lambda k: -ours[k][0] * ours[k][1]):
        ms, n, work = ours[key]
        ov_ms = theirs.get(key, (None,))[0]
        total[0] += ms * n
        total[1] += (ov_ms or 0.0) * n
        ov_cells = (f"{ov_ms:.3f} | ", f"{work / ov_ms / 1e6:.0f} | ", f"{ms / ov_ms:.2f}") if ov_ms else ("- | ", "- | ", "-")
        rows.append(f"| {key} | {n} | {work / 1e6:.1f} | {ms:.3f} | {ov_cells[0]}{work / ms / 1e6:.0f} | "
                    f"{ov_cells[1]}{ov_cells[2]} |")
    rows.append(f"| all convs, per run | | | {total[0]:.3f} | {total[1]:.3f} | | | {total[0] / total[1]:.2f} |")
    table = "\n".join(rows)
    print(table)
    if args.record:
        from results import record

        record(f"conv-rates-{args.model}",
               f"Where does TVM int8 stand against OpenVINO int8, conv by conv ({args.model})?", table,
               f"{args.model}, batch 1, {args.threads} threads, int8 (edgeopt's default QDQ for TVM, "
               f"NNCF for OpenVINO); medians of {args.runs} runs, TVM in a process of its own; "
               "times as oneDNN's verbose output and OpenVINO's PERF_COUNT report them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
