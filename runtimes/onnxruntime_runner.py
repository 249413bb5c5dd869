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
            (TOOLCHAIN.md measured a 4x slowdown with interleaved sessions).
        optimization: onnxruntime graph optimization level name: "disable", "basic",
            "extended" or "all".
    """

    runtime = "onnxruntime"
    LEVELS = ("disable", "basic", "extended", "all")

    def __init__(self, path: str | os.PathLike, threads: int | None = None, spin: bool = False,
                 optimization: str = "all"):
        import onnxruntime as ort

        from .errors import InputError

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
