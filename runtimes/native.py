"""The ``native`` runtime: the C++ runner ``edgeopt-run`` (runtimes/native/) driven from Python.

``runner_binary()`` builds the runner with CMake into a cache folder the first time (and again
only when its sources or the TVM runtime change); ``NativeRunner`` runs an artifact with it in a
subprocess and reads back its ``.npy`` outputs and its timing JSON, so the latency is what the
program measured around its own calls, without Python or process start-up in it.

An aarch64 artifact runs here under ``qemu-aarch64`` (``emulate="qemu"``) for correctness
checks; its timing is labelled emulated and is not ARM latency. The aarch64 TVM runtime comes
from PyPI's aarch64 wheels, fetched once by ``python -m edgeopt.runtimes.native fetch-aarch64``
(``make test`` does it).

Example:
    >>> from edgeopt.runtimes import load  # doctest: +SKIP
    >>> r = load("build/r18-cpu", runtime="native", threads=2)  # doctest: +SKIP
    >>> r.benchmark(r.example_inputs(), warmup=5, repeat=20).latency.median_ms  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.files import cache_root

from .artifact import Artifact
from .base import BenchmarkResult, Runner, example_inputs
from .fingerprint import machine_fingerprint
from .timing import TimingStats, check_counts

SOURCE_DIR = Path(__file__).parent / "native"
ARCHES = ("host", "aarch64")
#: Seconds one run of the native runner may take before it is killed (qemu is ~10-50x slower).
DEFAULT_TIMEOUT_S = 600.0




def host_tvm_root() -> Path:
    """The site-packages folder holding this interpreter's ``tvm/`` and ``tvm_ffi/``."""
    import tvm_ffi

    return Path(tvm_ffi.__file__).resolve().parent.parent


def aarch64_tvm_root() -> Path:
    """Where ``fetch-aarch64`` unpacks the aarch64 TVM runtime and tvm-ffi libraries."""
    return cache_root() / "tvm-aarch64" / _tvm_versions_tag()


def _tvm_versions_tag() -> str:
    return f"tvm-{metadata.version('apache-tvm')}_ffi-{metadata.version('apache-tvm-ffi')}"


def fetch_aarch64_runtime(dest: Path | None = None, log=print) -> Path:
    """Download the aarch64 apache-tvm / apache-tvm-ffi wheels of the installed versions (pip) and
    unpack the runtime libraries and headers the runner needs. Setup step, not run time."""
    dest = dest or aarch64_tvm_root()
    if (dest / "tvm" / "lib" / "libtvm_runtime.so").exists():
        return dest
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_aarch64", "--python-version", py, "-d", tmp,
               f"apache-tvm=={metadata.version('apache-tvm')}",
               f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
        log("fetching the aarch64 TVM runtime: " + " ".join(cmd[2:]))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError("could not download the aarch64 TVM wheels with pip: "
                             + (r.stderr.strip().splitlines() or ["no output"])[-1])
        staging = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None))
        wanted = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/include/")
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.startswith(wanted[2]) or name in wanted[:2]:
                        z.extract(name, staging)
        if not (staging / wanted[0]).exists() or not (staging / wanted[1]).exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError("the aarch64 wheels do not contain libtvm_runtime.so and libtvm_ffi.so")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
    return dest


def _cross_toolchain_file() -> Path:
    return SOURCE_DIR / "aarch64-linux-gnu.cmake"


def runner_binary(arch: str = "host", log=lambda s: None) -> Path:
    """Path of ``edgeopt-run`` for ``arch`` ("host" or "aarch64"), built with CMake if needed.

    The build folder's name hashes the runner's sources, the architecture and the TVM runtime
    it links, so an up-to-date build is reused and a changed one is rebuilt beside it.

    Raises:
        InputError: an unknown arch, no ``cmake``, no cross compiler, or the aarch64 runtime
            not fetched yet (each message names the fix).
    """
    if arch not in ARCHES:
        raise InputError(f"native runner arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    if shutil.which("cmake") is None:
        raise InputError("building the native runner needs cmake (apt-get install cmake, or pip install cmake)")
    if arch == "aarch64":
        if shutil.which("aarch64-linux-gnu-g++") is None:
            raise InputError("building the aarch64 runner needs aarch64-linux-gnu-g++ "
                             "(Debian/Ubuntu package g++-aarch64-linux-gnu)")
        tvm_root = aarch64_tvm_root()
        if not (tvm_root / "tvm" / "lib" / "libtvm_runtime.so").exists():
            raise InputError(f"the aarch64 TVM runtime is not in {tvm_root}; fetch it once with "
                             f"`{sys.executable} -m edgeopt.runtimes.native fetch-aarch64`")
    else:
        tvm_root = host_tvm_root()
    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    h.update(f"{arch}|{tvm_root}|{_tvm_versions_tag()}".encode())
    build_dir = cache_root() / "native" / f"{arch}-{h.hexdigest()[:16]}"
    binary = build_dir / "edgeopt-run"
    if binary.exists():
        return binary
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=build_dir.parent))
    configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(tmp), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DEDGEOPT_TVM_ROOT={tvm_root}"]
    if arch == "aarch64":
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={_cross_toolchain_file()}")
    log(f"building the native runner ({arch}) in {build_dir}")
    try:
        for cmd in (configure, ["cmake", "--build", str(tmp), "--parallel", "2"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{(r.stdout + r.stderr)[-3000:]}")
        if build_dir.exists():  # another process finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(build_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return binary


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
    """

    runtime = "native"

    def __init__(self, artifact: Artifact, threads: int | None = None, emulate: str | None = None,
                 arch: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, log=lambda s: None):
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
        self.artifact = artifact
        self.emulated = bool(self.command_prefix)
        self.arch = runs_on
        self.timeout_s = timeout_s
        self.binary = runner_binary(arch, log=log)
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
                            mean_ms=timing["mean_ms"], stdev_ms=timing["stdev_ms"], n=int(timing["n"]))
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


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeopt.runtimes.native fetch-aarch64 | build [host|aarch64]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgeopt.runtimes.native",
                                description="Set up the native runner edgeopt-run.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch-aarch64", help="download the aarch64 TVM runtime libraries (pip)")
    b = sub.add_parser("build", help="build edgeopt-run and print its path")
    b.add_argument("arch", nargs="?", default="host", choices=ARCHES)
    args = p.parse_args(argv)
    try:
        if args.command == "fetch-aarch64":
            print(fetch_aarch64_runtime())
        else:
            print(runner_binary(args.arch, log=lambda s: print(s, file=sys.stderr)))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
