"""edgeopt.runtimes: run and time artifacts on torch eager, onnxruntime and TVM.

This package is what ships to devices: importing it pulls in neither torch nor the TVM
compiler (each backend imports its library when a runner is created).

Example:
    >>> import edgeopt.runtimes as ert  # doctest: +SKIP
    >>> runner = ert.load("build/demo/fp32-onnx", threads=2)  # doctest: +SKIP
    >>> stats = runner.benchmark(runner.example_inputs(), warmup=10, repeat=100)  # doctest: +SKIP
    >>> stats.latency.median_ms  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeopt.core.tensors import TensorSpec

from .artifact import Artifact, load_artifact, write_artifact
from .base import BenchmarkResult, Runner, example_inputs
from edgeopt.core.errors import CheckFailed, InputError, ParityError
from .fingerprint import machine_fingerprint
from .timing import TimingStats, measure

#: Runtime names accepted by ``load`` and the CLI, and the artifact format each one runs.
RUNTIMES = {"torch": "torch", "onnxruntime": "onnx", "openvino": "onnx", "executorch": "pte", "tvm": "tvm",
            "native": "tvm"}
DEFAULT_RUNTIME = {"torch": "torch", "onnx": "onnxruntime", "pte": "executorch", "tvm": "tvm"}


def check_runtime(name: str) -> str:
    """Return ``name`` if it is a known runtime, else raise ``InputError`` listing them."""
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    return name


def load(artifact: str | os.PathLike | Artifact, runtime: str | None = None,
         threads: int | None = None, **options: Any) -> Runner:
    """Open an artifact (folder, ``.onnx`` file or ``.pt2`` file) on a runtime.

    Args:
        artifact: an artifact folder written by edgeopt, a bare ``.onnx`` file, or a ``.pt2``.
        runtime: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` (ONNX on OpenVINO's CPU plugin; the
            ``openvino`` extra), ``"executorch"`` (a ``.pte`` program; the ``executorch`` extra), ``"tvm"`` (Python TVM VM) or ``"native"`` (the C++ runner
            ``edgeopt-run``); default: the one that runs the artifact's format.
        threads: worker threads for the backend.
        options: backend options (``spin``/``optimization`` for onnxruntime, ``precision`` for
            openvino, ``device`` for tvm,
            ``emulate="qemu"`` / ``arch`` for native).
    """
    if runtime is not None:
        check_runtime(runtime)
    if not isinstance(artifact, Artifact):
        path = Path(artifact)
        if not path.exists():
            raise FileNotFoundError(f"model {str(path)!r} does not exist")
        if path.is_dir():
            artifact = load_artifact(path)
        else:
            fmt = {".onnx": "onnx", ".pt2": "torch", ".pte": "pte"}.get(path.suffix)
            if fmt is None:
                raise InputError(f"{str(path)!r}: expected an artifact folder, a .onnx, .pt2 or .pte file")
            return _open(fmt, runtime or DEFAULT_RUNTIME[fmt], path, None, threads, options)
    fmt = artifact.format
    return _open(fmt, runtime or DEFAULT_RUNTIME[fmt], artifact.model_file, artifact, threads, options)


def _open(fmt: str, runtime: str, path: Path, artifact: Artifact | None, threads, options) -> Runner:
    if RUNTIMES[runtime] != fmt:
        raise InputError(
            f"runtime {runtime!r} runs {RUNTIMES[runtime]} models, but {str(path)!r} is a {fmt} model"
            + ("; compile it first (edgeopt compile / edgeopt.compile.build)" if runtime == "tvm" else ""))
    if runtime == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner
        return OnnxRuntimeRunner(path, threads=threads, **options)
    if runtime == "openvino":
        from .openvino_runner import OpenVinoRunner
        return OpenVinoRunner(path, threads=threads, **options)
    if runtime == "executorch":
        from .executorch_runner import ExecuTorchRunner
        io = (artifact.inputs, artifact.outputs) if artifact is not None else (None, None)
        return ExecuTorchRunner(path, *io, threads=threads, **options)
    if runtime == "torch":
        from .torch_runner import TorchRunner
        return TorchRunner(path, threads=threads, **options)
    assert artifact is not None  # a tvm library is only ever loaded from its artifact folder
    if runtime == "native":
        from .native import NativeRunner
        return NativeRunner(artifact, threads=threads, **options)
    from .tvm_runner import TvmRunner
    _check_host_can_run(artifact)
    device = options.pop("device", "cuda" if (artifact.manifest.get("target") or {}).get("kind") == "cuda" else "cpu")
    plugins = [artifact.path / name for name in artifact.manifest.get("plugins", [])]
    return TvmRunner(path, artifact.inputs, artifact.outputs, device=device, threads=threads,
                     plugins=plugins, **options)


def _check_host_can_run(artifact: Artifact) -> None:
    """A library cross-compiled for another CPU, or built for features this CPU lacks, cannot be
    loaded here: say so plainly."""
    import platform

    triple = artifact.target_triple
    arch = triple.split("-")[0] if triple else ""
    if arch and arch != platform.machine():
        raise InputError(
            f"artifact {str(artifact.path)!r} was built for {arch} ({triple}); this host is "
            f"{platform.machine()}. Run it on the device, or under qemu-{arch} with the native runner (runtime 'native', emulate 'qemu')")
    artifact.check_cpu_features()


__all__ = [
    "Artifact", "BenchmarkResult", "CheckFailed", "InputError", "ParityError", "Runner",
    "RUNTIMES", "TensorSpec", "TimingStats", "check_runtime", "example_inputs", "load",
    "load_artifact", "machine_fingerprint", "measure", "write_artifact",
]
