"""The ``native`` runtime: the C++ runner ``edgeopt-run`` (runtimes/native/) driven from Python.

``NativeRunner`` runs an artifact with an already-built ``edgeopt-run`` in a subprocess: it
writes the inputs as ``.npy`` files, reads back the ``.npy`` outputs and the timing JSON, so the
latency is what the program measured around its own calls, without Python or process start-up
in it. This module only runs the runner: pass ``binary=`` (a deployment bundle's
``edgeopt-run``, say), or ``provide_binary=`` (``(arch, progress) -> Path``), on a workstation
``edgeopt.compile.native_build.runner_binary``, the compile side's cached build. Runtimes import
nothing above them, so the build tooling is handed in, never imported here (``edgeopt bench
--runtime native`` hands it in).

An aarch64 artifact runs here under ``qemu-aarch64`` (``emulate="qemu"``) for correctness
checks; its timing is labelled emulated and is not ARM latency. Building the aarch64 runner needs
the aarch64 TVM runtime, fetched once by ``python -m edgeopt.compile.native_build fetch-aarch64``
(``make test`` does it).

Example:
    >>> from edgeopt.runtimes import load  # doctest: +SKIP
    >>> from edgeopt.compile.native_build import runner_binary  # doctest: +SKIP
    >>> r = load("build/r18-cpu", runtime="native", threads=2, provide_binary=runner_binary)  # doctest: +SKIP
    >>> r.benchmark(r.example_inputs(), warmup=5, repeat=20).latency.median_ms  # doctest: +SKIP
    >>> r = load("build/r18-cpu", runtime="native", binary="bundle/edgeopt-run")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.result import Progress

from .artifact import Artifact
from .base import BenchmarkResult, Runner, example_inputs
from .fingerprint import machine_fingerprint
from .timing import TimingStats, check_counts

#: Runner builds: "host" (this interpreter's CPU) or "aarch64" (cross-built, run on ARM or qemu).
ARCHES = ("host", "aarch64")
#: Seconds one run of the native runner may take before it is killed (qemu is ~10-50x slower).
DEFAULT_TIMEOUT_S = 600.0

#: ``provide_binary(arch, progress) -> Path``: how ``NativeRunner`` gets ``edgeopt-run`` for an arch.
BinaryProvider = Callable[[str, Callable[[str], None]], Path]


def artifact_arch(artifact: Artifact) -> str:
    """ "aarch64", "x86_64", ... : the CPU an artifact's library was built for."""
    triple = artifact.target_triple
    return triple.split("-")[0] if triple else platform.machine()


class NativeRunner(Runner):
    """Runs a CPU TVM artifact with ``edgeopt-run`` in a subprocess.

    Args:
        artifact: a loaded TVM artifact for a CPU target.
        threads: TVM thread-pool size in the runner (``None``: one per core).
        emulate: ``"qemu"`` runs the aarch64 runner under ``qemu-aarch64`` (aarch64 artifacts on
            an x86 host); timings are then labelled emulated.
        arch: the runner build to use ("host" or "aarch64"); default: the artifact's.
        timeout_s: a run that takes longer is killed and reported.
        progress: progress messages (a build on demand says so): None, True (stderr) or a callable.
        binary: path of a built ``edgeopt-run`` for ``arch`` to run (a bundle's, say); then
            ``provide_binary`` is not called.
        provide_binary: ``(arch, progress) -> Path`` of ``edgeopt-run`` when ``binary`` is not given
            (``edgeopt.compile.native_build.runner_binary`` builds and caches one); one of the
            two is needed.
    """

    runtime = "native"

    def __init__(self, artifact: Artifact, threads: int | None = None, emulate: str | None = None,
                 arch: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, progress: Progress = None,
                 binary: str | os.PathLike | None = None, provide_binary: BinaryProvider | None = None):
        super().__init__(artifact.inputs, artifact.outputs, threads)
        if artifact.format != "tvm":
            raise InputError(f"the native runner runs TVM artifacts; {str(artifact.path)!r} is "
                             f"{artifact.format} (compile it with edgeopt compile)")
        if (artifact.manifest.get("target") or {}).get("kind") not in (None, "llvm"):
            raise InputError(f"the native runner runs CPU artifacts; {str(artifact.path)!r} targets "
                             f"{artifact.manifest['target'].get('kind')}")
        if emulate not in (None, "qemu"):
            raise InputError(f"emulate must be 'qemu' or None, got {emulate!r}")
        host = platform.machine()
        built_for = artifact_arch(artifact)
        if arch is None:
            arch = "host" if built_for == host else built_for
        if arch not in ARCHES:
            raise InputError(f"no native runner for {arch} artifacts (have: {host}, aarch64)")
        runs_on = host if arch == "host" else arch
        self.command_prefix: list[str] = []
        if runs_on != host:
            if emulate != "qemu":
                raise InputError(
                    f"artifact {str(artifact.path)!r} is for {runs_on} and this host is {host}: run it on "
                    f"the device (deployment bundle, RPC), or pass emulate='qemu' (--emulate qemu) for "
                    "a correctness check under qemu-aarch64")
            qemu = shutil.which(f"qemu-{runs_on}")
            if qemu is None:
                raise InputError(f"emulating {runs_on} needs qemu-{runs_on} (Debian package qemu-user)")
            self.command_prefix = [qemu, "-L", f"/usr/{runs_on}-linux-gnu"]
        elif emulate == "qemu":
            raise InputError(f"emulate='qemu' is for artifacts built for another CPU; "
                             f"{str(artifact.path)!r} runs natively on this {host} host")
        else:
            artifact.check_cpu_features()
        self.artifact = artifact
        self.emulated = bool(self.command_prefix)
        self.arch = runs_on
        self.timeout_s = timeout_s
        if binary is not None:
            self.binary = Path(binary)
            if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
                raise InputError(f"native runner binary {str(self.binary)!r} is not an executable file")
        elif provide_binary is not None:
            self.binary = Path(provide_binary(arch, progress))
        else:
            raise InputError("the native runner needs a built edgeopt-run: pass binary= (a bundle's) or "
                             "provide_binary= (edgeopt.compile.native_build.runner_binary builds one)")
        if self.emulated:
            self.runtime = f"native (emulated: qemu-{runs_on})"

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    # The base class's hooks, for ``run``: one execution, outputs read back.
    def _bind(self, arrays: list[np.ndarray]) -> Any:
        return arrays

    def _call(self, bound: Any) -> Sequence[Any]:
        outputs, _ = self._execute(bound, warmup=0, repeat=1)
        return outputs

    def benchmark(self, inputs: Any, warmup: int = 10, repeat: int = 100) -> BenchmarkResult:
        """Time ``repeat`` runs inside the native program, after ``warmup`` untimed ones."""
        check_counts(warmup, repeat)
        _, timing = self._execute(self.prepare(inputs), warmup=warmup, repeat=repeat, want_outputs=False)
        stats = TimingStats(median_ms=timing["median_ms"], p90_ms=timing["p90_ms"], min_ms=timing["min_ms"],
                            mean_ms=timing["mean_ms"], stdev_ms=timing["stdev_ms"], n=int(timing["n"]),
                            p99_ms=timing.get("p99_ms"))
        machine = machine_fingerprint(self.threads)
        if self.emulated:
            machine["emulated"] = f"qemu-{self.arch} on {machine['machine']}: not {self.arch} latency"
        return BenchmarkResult(self.runtime, stats, machine)

    def _execute(self, arrays: list[np.ndarray], warmup: int, repeat: int,
                 want_outputs: bool = True) -> tuple[list[np.ndarray], dict]:
        with tempfile.TemporaryDirectory(prefix="edgeopt-native-") as tmp:
            cmd = [*self.command_prefix, str(self.binary), str(self.artifact.path),
                   "--warmup", str(warmup), "--repeat", str(repeat),
                   "--timing", str(Path(tmp) / "timing.json")]
            if self.threads:
                cmd += ["--threads", str(self.threads)]
            for spec, a in zip(self.inputs, arrays):
                f = Path(tmp) / f"in_{len(cmd)}.npy"
                np.save(f, a)
                cmd += ["--input", f"{spec.name}={f}"]
            if want_outputs:
                (Path(tmp) / "out").mkdir()
                cmd += ["--outputs", str(Path(tmp) / "out")]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"the native runner did not finish within {self.timeout_s:.0f} s "
                                   f"on {str(self.artifact.path)!r}") from None
            if r.returncode != 0:
                message = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
                message = message.replace("edgeopt-run: error: ", "")
                if r.returncode == 2:
                    raise InputError(f"native runner: {message}")
                raise RuntimeError(f"native runner failed (exit {r.returncode}): {message}")
            timing = json.loads((Path(tmp) / "timing.json").read_text())
            outputs = []
            if want_outputs:
                files = sorted((Path(tmp) / "out").glob("*.npy"), key=lambda p: int(p.name.split("_")[0]))
                outputs = [np.load(f) for f in files]
        return outputs, timing
