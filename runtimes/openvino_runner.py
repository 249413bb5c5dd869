"""OpenVINO backend of the runner interface: an ONNX artifact (fp32, or edgeopt's int8 QDQ) on
OpenVINO's CPU plugin.

OpenVINO reads ONNX directly and runs QDQ graphs as int8 (it folds the QuantizeLinear /
DequantizeLinear pairs into its low-precision kernels). Its CPU plugin picks an inference
precision by itself (bf16 on CPUs with AVX512-BF16 or AMX, f32 elsewhere); ``precision`` asks for
one, and ``chosen_precision`` says what the compiled model uses, so a report can say it.

The ``openvino`` package is an optional extra (``pip install -e .[openvino]``).

Example:
    >>> from edgeopt.runtimes.openvino_runner import OpenVinoRunner  # doctest: +SKIP
    >>> r = OpenVinoRunner("build/demo/fp32-onnx/model.onnx", threads=2)  # doctest: +SKIP
    >>> r.chosen_precision, r.version  # doctest: +SKIP
    ('f32', '2026.4.1')
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError

from .base import Runner, example_inputs
from .onnx_file import load_onnx, onnx_io

#: ``precision`` values: the plugin's own choice, or an inference precision hint.
PRECISIONS = ("default", "f32", "bf16", "f16")


def openvino_module():
    """The ``openvino`` package, or an ``InputError`` naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise InputError("runtime 'openvino' needs the openvino package, which is not installed: "
                         "pip install -e .[openvino] (or pip install openvino)") from None
    return openvino


def openvino_version() -> str:
    """The installed OpenVINO release (``2026.4.1``), without its build suffix."""
    return openvino_module().__version__.split("-")[0]


class OpenVinoRunner(Runner):
    """An OpenVINO ``CompiledModel`` on the CPU for one ONNX file.

    Args:
        path: the ``.onnx`` file.
        threads: inference threads (``None``: OpenVINO's default, one per core).
        precision: ``"default"`` (the plugin's choice), ``"f32"``, ``"bf16"`` or ``"f16"``; a
            reduced precision the CPU cannot run is an ``InputError``.
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "default"):
        ov = openvino_module()
        if precision not in PRECISIONS:
            raise InputError(f"openvino precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        model = load_onnx(path, check=False)
        inputs, outputs = onnx_io(model)
        super().__init__(inputs, outputs, threads)
        core = ov.Core()
        capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        wanted = {"bf16": "BF16", "f16": "FP16"}.get(precision)
        if wanted and wanted not in capabilities:
            raise InputError(f"openvino precision {precision!r} needs a CPU with {wanted} support; this "
                             f"CPU offers {', '.join(sorted(capabilities))}")
        # latency mode: one stream, the threads of one request (what edgeopt's timings compare)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            read = core.read_model(str(path))
            self.compiled = core.compile_model(read, "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with the frontend's message
            raise InputError(f"openvino cannot load {str(path)!r}: {_openvino_reason(e)}") from None
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type
        self.chosen_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.version = openvino_version()
        self.path = str(path)

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        return list(arrays)

    def _call(self, bound: Any) -> Sequence[Any]:
        result = self.request.infer(bound)
        # copies: the request's output tensors are overwritten by the next inference
        return [np.array(result[out]) for out in self.compiled.outputs]


def _openvino_reason(error: BaseException) -> str:
    """The line of an OpenVINO error that gives the reason (not always its first)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # OpenVINO's messages start with a "Check '...' failed at <source path>" line: the reason
    # follows it
    useful = [line for line in lines if not line.startswith(("Check ", "Exception from"))]
    # a model with an op the ONNX frontend cannot convert: the op is named on a later line
    # ("-- No conversion rule found for operations: Det-17"); that line is the reason
    unconverted = [line.lstrip("- ") for line in lines if "No conversion rule found for operations" in line]
    if unconverted:
        return unconverted[0].replace("No conversion rule found for operations",
                                      "OpenVINO has no conversion rule for the ONNX operation(s)")
    return (useful or lines or [type(error).__name__])[0]
