"""Benchmark orchestration behind ``edgeopt bench``: open a runner for any ARTIFACT argument
(exporting and compiling a torch MODEL on the fly), or run on remote devices over TVM RPC.

Example:
    >>> from edgeopt.pipeline.bench import is_torch_spec
    >>> is_torch_spec("zoo:resnet18"), is_torch_spec("build/m.onnx")
    (True, False)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgeopt.core.errors import InputError


def is_torch_spec(spec: str) -> bool:
    """Whether ``spec`` names a torch MODEL (``zoo:NAME``, ``module:factory``) rather than a file."""
    from .models import FILE_SUFFIXES

    return spec.startswith("zoo:") or (":" in spec and not os.path.exists(spec)
                                       and not spec.endswith(FILE_SUFFIXES))


def open_runner(spec: str, runtime: str | None, threads: int | None, workdir: Path,
                input_shape: str | None = None, emulate: str | None = None,
                log: Callable[[str], None] = lambda s: None, weights: str | None = None):
    """A runner for ``spec``: an artifact folder, an ``.onnx``/``.pt2`` file, or a torch MODEL
    (eager torch, or exported and compiled into ``workdir`` for onnxruntime / tvm)."""
    from edgeopt.runtimes import check_runtime, load

    if runtime is not None:
        check_runtime(runtime)
    if emulate and runtime != "native":
        raise InputError("--emulate qemu needs --runtime native")
    if is_torch_spec(spec):
        return _runner_for_torch_spec(spec, runtime or "torch", threads, workdir,
                                      _one_shape(input_shape), weights)
    if weights:
        raise InputError("--weights goes with a torch MODEL spec (zoo:NAME, module.path:factory)")
    path = Path(spec)
    if runtime == "tvm" and path.suffix == ".onnx":
        from edgeopt.compile import BuildConfig, build

        log(f"compiling {spec} with TVM for the host CPU (untuned) ...")
        art = build(path, BuildConfig(target="cpu", input_shape=input_shape), out=workdir / "tvm").artifact
        return load(art, runtime="tvm", threads=threads)
    options = {"emulate": emulate} if emulate else {}
    return load(path, runtime=runtime, threads=threads, **options)


def _one_shape(input_shape):
    """A torch MODEL takes one input shape (``1,3,32,32``); repeated options name ONNX inputs."""
    if isinstance(input_shape, (list, tuple)) and all(isinstance(v, str) for v in input_shape):
        if len(input_shape) != 1 or "=" in input_shape[0]:
            raise InputError(f"--input-shape {' '.join(input_shape)}: a torch MODEL takes one shape, "
                             "e.g. 1,3,32,32 (NAME=... is for ONNX models with several inputs)")
        return input_shape[0]
    return input_shape


def bench_inputs(runner, input_shape=None, seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs to time ``runner`` on: the given shape(s) for dynamic dimensions.

    A dynamic batch axis runs at 1; any other dynamic dimension needs ``input_shape``
    (``InputError`` naming the input and its declared shape): timing a guessed 1x1 image
    would be a silently wrong figure.
    """
    from edgeopt.compile.onnx_shapes import concrete_specs, resolve_input_shapes
    from edgeopt.runtimes.base import example_inputs

    shapes = resolve_input_shapes(runner.inputs, input_shape, option="--input-shape")
    return example_inputs(concrete_specs(runner.inputs, shapes), seed)


def _runner_for_torch_spec(spec: str, runtime: str, threads, workdir: Path, input_shape, weights=None):
    import torch

    from edgeopt.compile import BuildConfig, ExportConfig, build, export
    from edgeopt.runtimes import load
    from edgeopt.runtimes.torch_runner import TorchRunner

    from .models import model_and_example

    module, x = model_and_example(spec, input_shape, weights=weights)
    if runtime == "torch":
        return TorchRunner(module, example=[torch.from_numpy(x)], threads=threads)
    exported = export(module, ExportConfig(), x, out=workdir / "onnx")
    if runtime == "onnxruntime":
        return load(exported.artifact, threads=threads)
    return load(build(exported, BuildConfig(target="cpu"), out=workdir / "tvm").artifact, threads=threads)


def parity(outputs, reference) -> float:
    """Largest relative error of ``outputs`` against ``reference`` (max|a-b| / max|b| per output)."""
    return max(float(np.max(np.abs(o - r))) / max(float(np.max(np.abs(r))), 1e-30)
               for o, r in zip(outputs, reference))


def reference_outputs(art, x, reference: str | None, log: Callable[[str], None]):
    """Outputs to check remote ones against: ``reference``, else this host's TVM VM if it can."""
    from edgeopt.runtimes import load

    if reference:
        return load(reference).run(x)
    try:
        return load(art, runtime="tvm").run(x)
    except InputError as e:  # e.g. an aarch64 artifact on an x86 client
        log(f"parity: not checked ({e}); pass --reference MODEL.onnx")
        return None
