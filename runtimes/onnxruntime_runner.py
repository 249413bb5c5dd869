"""onnxruntime backend of the runner interface (CPU execution provider).

Example:
    >>> from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner  # doctest: +SKIP
    >>> r = OnnxRuntimeRunner("build/demo/fp32-onnx/model.onnx", threads=2)  # doctest: +SKIP
    >>> r.benchmark(r.example_inputs(), warmup=5, repeat=50).latency.median_ms  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .base import Runner, example_inputs
from .onnx_file import load_onnx, onnx_io


class OnnxRuntimeRunner(Runner):
    """An onnxruntime ``InferenceSession`` on one ONNX file.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        spin: let idle worker threads spin after a run. Off by default: on a 2-core machine
            spinning threads steal the cores of whatever runs next in the same process
            (a 4x slowdown was measured with interleaved sessions on 2 cores).
        optimization: onnxruntime graph optimization level name: "disable", "basic",
            "extended" or "all".
    """

    runtime = "onnxruntime"
    LEVELS = ("disable", "basic", "extended", "all")

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = False,
                 optimization: str = "all"):
        import onnxruntime as ort

        from edgeopt.core.errors import InputError

        if optimization not in self.LEVELS:
            raise InputError(f"optimization must be one of {self.LEVELS}, got {optimization!r}")
        model = load_onnx(path, check=False)
        inputs, outputs = onnx_io(model)
        super().__init__(inputs, outputs, threads)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise InputError(f"onnxruntime cannot load {str(path)!r}: {e}") from None
        self._names = [s.name for s in self.inputs]
        self.path = str(path)

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        return dict(zip(self._names, arrays))

    def _call(self, bound: Any) -> Sequence[Any]:
        return self.session.run(None, bound)



def profile_ops(path: str | os.PathLike, inputs: Any, runs: int = 50, threads: int | None = None) -> dict:
    """Time per kernel kind (ms per run, summed over nodes) from onnxruntime's profiler.

    Kernels are named as they run after graph optimization (``QLinearConv`` where a QDQ group
    was fused); convolutions are split into ``/depthwise`` and ``/dense``, since the two behave
    differently in int8. This is what shows where an int8 model's time goes.
    """
    import json
    import re
    import tempfile

    import onnx
    import onnxruntime as ort

    runner = OnnxRuntimeRunner(path, threads=threads)
    feeds = runner._bind(runner.prepare(inputs))
    graph = onnx.load(str(path), load_external_data=False).graph
    grouped = {n.name for n in graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    warm = 5
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(warm + runs):
            session.run(None, feeds)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    totals: dict = {}
    counts: dict = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        kind = args.get("op_name", "?")
        if "Conv" in kind:
            node = re.sub(r"(_token_\d+|_nchwc)$", "", name[: -len("_kernel_time")])
            shapes = [list(d.values())[0] for d in args.get("input_type_shape", []) if d]
            weight = shapes[1] if len(shapes) > 1 and len(shapes[1]) == 4 else None
            depthwise = node in grouped or (weight is not None and weight[1] == 1)
            kind += "/depthwise" if depthwise else "/dense"
        totals[kind] = totals.get(kind, 0.0) + e["dur"] / 1000.0
        counts[kind] = counts.get(kind, 0) + 1
    n = warm + runs
    return {k: {"ms_per_run": t / n, "nodes": counts[k] // n}
            for k, t in sorted(totals.items(), key=lambda kv: -kv[1])}
