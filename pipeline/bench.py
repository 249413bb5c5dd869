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
from edgeopt.core.result import Progress, reporter


def is_torch_spec(spec: str) -> bool:
    """Whether ``spec`` names a torch MODEL (``zoo:NAME``, ``module:factory``) rather than a file."""
    from .models import FILE_SUFFIXES

    return spec.startswith("zoo:") or (":" in spec and not os.path.exists(spec)
                                       and not spec.endswith(FILE_SUFFIXES))


def open_runner(spec: str, runtime: str | None, threads: int | None, workdir: Path,
                input_shape: str | None = None, emulate: str | None = None,
                progress: Progress = None, weights: str | None = None):
    """A runner for ``spec``: an artifact folder, an ``.onnx``/``.pt2`` file, or a torch MODEL
    (eager torch, or exported and compiled into ``workdir`` for onnxruntime / tvm)."""
    log = reporter(progress)
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
    if runtime == "native":  # the runtime only runs edgeopt-run; the compile side builds it
        from edgeopt.compile.native_build import runner_binary

        options["provide_binary"] = runner_binary
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
    if runtime in ("onnxruntime", "openvino"):
        return load(exported.artifact, runtime=runtime, threads=threads)
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


#: argv[1] of every background-load process (``edgeopt bench --load``), then the parent's pid:
#: what a test (or a user with ``ps``) finds them by.
LOAD_MARKER = "edgeopt-bench-load"

# A busy loop that ends by itself when its parent is gone (even a SIGKILLed one, which runs no
# cleanup) or after its deadline: a background load never outlives the measurement it serves.
_BUSY_LOOP = """
import os, sys, time
parent, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
sys.stdout.write("r")
sys.stdout.flush()
while os.getppid() == parent and time.monotonic() < deadline:
    for _ in range(20000):
        pass
"""


class BackgroundLoad:
    """``n`` busy-loop processes, each one core's worth of work, for as long as the ``with``
    block runs: the co-located load of an edge device (``edgeopt bench --load N``).

    Each process is pinned to its own core, the last ones first (``pinned``; not on systems
    without ``sched_setaffinity``), so the load is exactly ``n`` busy cores wherever the OS puts
    the measured threads. They run in their own session (a Ctrl-C at the terminal reaches only
    edgeopt, which ends them on the way out), spin only once all of them have started, and end
    when the block exits, whatever ends it, when edgeopt dies, or after ``max_seconds``.

    Example:
        >>> with BackgroundLoad(1, max_seconds=30) as load:  # doctest: +SKIP
        ...     stats = runner.benchmark(x).latency
    """

    def __init__(self, n: int, max_seconds: float = 3600.0):
        cores = os.cpu_count() or 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cores:
            raise InputError(f"--load must be a number of busy cores from 1 to {cores} (this machine's "
                             f"cores), got {n!r}")
        self.n, self.max_seconds = n, float(max_seconds)
        self.pinned = hasattr(os, "sched_setaffinity")
        self.cores: list[int] = []
        self.processes: list = []

    def __enter__(self) -> "BackgroundLoad":
        import subprocess
        import sys

        try:
            cores = sorted(os.sched_getaffinity(0)) if self.pinned else []
            for i in range(self.n):
                p = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP, LOAD_MARKER, str(os.getpid()),
                                      str(self.max_seconds)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
                self.processes.append(p)
                if cores:
                    core = cores[-1 - i % len(cores)]
                    os.sched_setaffinity(p.pid, {core})
                    self.cores.append(core)
            for p in self.processes:  # each says "r" once its loop starts
                if p.stdout.read(1) != b"r":
                    raise RuntimeError(f"a background load process ended at start (exit {p.wait()})")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End every load process and reap it (safe to call twice)."""
        import subprocess

        for p in self.processes:
            if p.poll() is None:
                p.kill()
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always ends
                pass
            if p.stdout:
                p.stdout.close()
        self.processes = []

    def describe(self) -> str:
        if self.cores:
            where = f"pinned to core{'s' if self.n > 1 else ''} {', '.join(map(str, self.cores))}"
        else:  # not started yet: where it will be
            where = "each pinned to a core of its own" if self.pinned else "not pinned"
        return f"{self.n} busy-loop process{'es' if self.n > 1 else ''} ({where})"
