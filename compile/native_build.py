"""Build tooling for native code: the runner ``edgeopt-run``, the oneDNN kernel plugin, the aarch64 TVM runtime.

The runner's C++ sources ship with ``edgeopt.runtimes`` (``runtimes/native/``: a device can build
them with CMake alone); ``edgeopt.runtimes.native`` only runs a built runner. This module builds
one on the workstation: ``runner_binary(arch)`` configures and builds the sources with CMake into
a cache folder the first time, and again only when the sources, the architecture or the TVM
runtime they link change. For ARM, ``fetch_aarch64_runtime()`` downloads the aarch64
``apache-tvm`` / ``apache-tvm-ffi`` wheels of the installed versions with pip and unpacks the
runtime libraries and headers the cross build links against (a setup step: ``make test`` runs
``python -m edgeopt.compile.native_build fetch-aarch64``). ``onednn_plugin()`` builds
``runtimes/onednn`` (the kernels of ``BuildConfig(kernels="onednn")``) the same way.

Example:
    >>> from edgeopt.compile.native_build import runner_binary  # doctest: +SKIP
    >>> runner_binary("host")  # doctest: +SKIP
    PosixPath('.../edgeopt/native/host-3f2a.../edgeopt-run')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from edgeopt.core.errors import InputError
from edgeopt.core.files import cache_root, make_temp_dir
from edgeopt.core.result import Progress, reporter
from edgeopt.runtimes.native import ARCHES

_RUNTIME_LIBS = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
_HEADERS = "tvm_ffi/include/"


def source_dir() -> Path:
    """The runner's sources (CMakeLists.txt, edgeopt_run.cc, the aarch64 toolchain file): package
    data of ``edgeopt.runtimes``, found through that package whether installed or in a checkout."""
    import edgeopt.runtimes  # light: no torch, no TVM

    return Path(edgeopt.runtimes.__file__).resolve().parent / "native"


def host_tvm_root() -> Path:
    """The site-packages folder holding this interpreter's ``tvm/`` and ``tvm_ffi/``."""
    import tvm_ffi

    return Path(tvm_ffi.__file__).resolve().parent.parent


def tvm_versions_tag() -> str:
    """``tvm-<version>_ffi-<version>`` of the installed TVM wheels (part of every cache key)."""
    return f"tvm-{metadata.version('apache-tvm')}_ffi-{metadata.version('apache-tvm-ffi')}"


def aarch64_tvm_root() -> Path:
    """Where ``fetch-aarch64`` unpacks the aarch64 TVM runtime and tvm-ffi libraries."""
    return cache_root("tvm-aarch64", tvm_versions_tag())


def tvm_runtime_libs(tvm_root: Path) -> list[Path]:
    """``libtvm_runtime.so`` and ``libtvm_ffi.so`` under ``tvm_root`` (what a bundle ships)."""
    return [tvm_root / lib for lib in _RUNTIME_LIBS]


def _has_runtime(tvm_root: Path) -> bool:
    return all(p.exists() for p in tvm_runtime_libs(tvm_root))


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished temporary folder ``tmp`` to ``dest``; when another process finished
    the same ``dest`` first, keep theirs and drop ``tmp``."""
    try:
        os.rename(tmp, dest)
    except OSError:
        if not dest.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_aarch64_runtime(dest: Path | None = None, progress: Progress = True) -> Path:
    """Download the aarch64 apache-tvm / apache-tvm-ffi wheels of the installed versions (pip) and
    unpack the runtime libraries and headers the runner needs into ``dest``; return ``dest``.

    Does nothing when ``dest`` already holds them. The files are unpacked into a temporary
    sibling folder that is renamed into place once complete.

    Raises:
        InputError: pip could not download the wheels, or they lack the runtime libraries.
    """
    log = reporter(progress)
    dest = Path(dest) if dest else aarch64_tvm_root()
    if _has_runtime(dest):
        return dest
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="edgeopt-wheels-") as wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_28_aarch64", "--python-version", py, "-d", wheels,
               f"apache-tvm=={metadata.version('apache-tvm')}",
               f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
        log("fetching the aarch64 TVM runtime: " + " ".join(cmd[2:]))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError("could not download the aarch64 TVM wheels with pip: "
                             + (r.stderr.strip().splitlines() or ["no output"])[-1])
        staging = make_temp_dir(dest)
        try:
            for wheel in sorted(Path(wheels).glob("*.whl")):
                with zipfile.ZipFile(wheel) as z:
                    for name in z.namelist():
                        if name.startswith(_HEADERS) or name in _RUNTIME_LIBS:
                            z.extract(name, staging)
            if not _has_runtime(staging):
                raise InputError("the aarch64 wheels do not contain libtvm_runtime.so and libtvm_ffi.so")
            _move_into_place(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return dest


def build_key(arch: str, tvm_root: Path, sources: Path | None = None, extra: str = "") -> str:
    """The cache key of a runner build: a hash of the runner's sources, ``arch``, the TVM runtime
    folder it links, the TVM versions and ``extra`` (anything else the build links). A changed
    source or TVM gives a new key."""
    h = hashlib.sha256()
    for f in sorted((sources or source_dir()).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    h.update(f"{arch}|{tvm_root}|{tvm_versions_tag()}".encode())
    if extra:
        h.update(f"|{extra}".encode())
    return f"{arch}-{h.hexdigest()[:16]}"


def runner_tvm_root(arch: str) -> Path:
    """The folder with the ``tvm/`` and ``tvm_ffi/`` packages a runner for ``arch`` links.

    Raises:
        InputError: an unknown arch, or the aarch64 runtime not fetched yet (naming the command).
    """
    if arch not in ARCHES:
        raise InputError(f"native runner arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    if arch == "host":
        return host_tvm_root()
    tvm_root = aarch64_tvm_root()
    if not _has_runtime(tvm_root):
        raise InputError(f"the aarch64 TVM runtime is not in {tvm_root}; fetch it once with "
                         f"`{sys.executable} -m edgeopt.compile.native_build fetch-aarch64`")
    return tvm_root


def runner_binary(arch: str = "host", progress: Progress = None) -> Path:
    """Path of ``edgeopt-run`` for ``arch`` ("host" or "aarch64"), built with CMake if needed.

    The build folder's name is ``build_key(...)``, so an up-to-date build is reused and a changed
    one is rebuilt beside it. The build runs in a temporary sibling folder renamed into place
    when complete (a concurrent build of the same key keeps whichever finished first).

    Raises:
        InputError: an unknown arch, no ``cmake``, no cross compiler, or the aarch64 runtime
            not fetched yet (each message names the fix).
    """
    log = reporter(progress)
    if arch not in ARCHES:
        raise InputError(f"native runner arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    if shutil.which("cmake") is None:
        raise InputError("building the native runner needs cmake (apt-get install cmake, or pip install cmake)")
    if arch == "aarch64" and shutil.which("aarch64-linux-gnu-g++") is None:
        raise InputError("building the aarch64 runner needs aarch64-linux-gnu-g++ "
                         "(Debian/Ubuntu package g++-aarch64-linux-gnu)")
    tvm_root = runner_tvm_root(arch)
    sources = source_dir()
    build_dir = cache_root("native", build_key(arch, tvm_root, sources))
    binary = build_dir / "edgeopt-run"
    if binary.exists():
        return binary
    configure = [f"-DEDGEOPT_TVM_ROOT={tvm_root}"]
    if arch == "aarch64":
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={sources / 'aarch64-linux-gnu.cmake'}")
    log(f"building the native runner ({arch}) in {build_dir}")
    _cmake_build(sources, build_dir, configure)
    return binary


def _cmake_build(sources: Path, build_dir: Path, configure_args: list[str]) -> None:
    """Configure and build ``sources`` with CMake into ``build_dir``, through a temporary sibling
    folder renamed into place when complete (a concurrent build of the same key keeps whichever
    finished first)."""
    tmp = make_temp_dir(build_dir)
    configure = ["cmake", "-S", str(sources), "-B", str(tmp), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython3_EXECUTABLE={sys.executable}", *configure_args]
    try:
        for cmd in (configure, ["cmake", "--build", str(tmp), "--parallel", "2"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{(r.stdout + r.stderr)[-3000:]}")
        _move_into_place(tmp, build_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


ONEDNN_PLUGIN = "libedgeopt_onednn.so"
#: What the plugin builds against, relative to the oneDNN prefix (the venv: requirements/onednn.txt):
#: oneDNN 3.x with the TBB CPU runtime, oneTBB, and the Intel compiler runtime libdnnl.so.3 needs.
ONEDNN_FILES = {
    "include/oneapi/dnnl/dnnl.hpp": "onednn-devel-cpu-tbb",
    "lib/libdnnl.so.3": "onednn-cpu-tbb",
    "include/oneapi/tbb/task_arena.h": "tbb-devel",
    "lib/libtbb.so.12": "tbb",
    "lib/libimf.so": "intel-cmplr-lib-rt",
    "lib/libintlc.so.5": "intel-cmplr-lib-rt",
}


def onednn_prefix() -> Path:
    """The prefix the oneDNN plugin is built against: this interpreter's ``sys.prefix`` (the venv),
    where ``pip install -r requirements/onednn.txt`` puts oneDNN's and TBB's ``include/`` and ``lib/``.

    >>> onednn_prefix() == Path(sys.prefix)
    True
    """
    return Path(sys.prefix)


def onednn_plugin_sources() -> Path:
    """The oneDNN kernel plugin's sources (``runtimes/onednn``: CMakeLists.txt and the C++ file)."""
    return source_dir().parent / "onednn"


def onednn_available() -> str | None:
    """None when the oneDNN plugin can be built here, else why not (naming the fix)."""
    import platform

    if platform.machine() != "x86_64":
        return f"the oneDNN plugin is built for x86-64 hosts; this one is {platform.machine()}"
    if shutil.which("cmake") is None:
        return "building the oneDNN plugin needs cmake (apt-get install cmake)"
    prefix = onednn_prefix()
    missing = sorted({package for path, package in ONEDNN_FILES.items() if not (prefix / path).exists()})
    if missing:
        return (f"building the oneDNN plugin needs oneDNN 3.x (TBB runtime) in {prefix}; missing "
                f"{', '.join(missing)}: {sys.executable} -m pip install -r requirements/onednn.txt")
    return None


def onednn_plugin(progress: Progress = None) -> Path:
    """Path of ``libedgeopt_onednn.so`` (the oneDNN kernel plugin), built with CMake if needed
    into a cache folder keyed by its sources, the TVM versions, the oneDNN prefix and oneDNN's version.

    Raises:
        InputError: the plugin cannot be built here (no cmake, no oneDNN, not x86-64).
    """
    log = reporter(progress)
    missing = onednn_available()
    if missing:
        raise InputError(missing)
    tvm_root = host_tvm_root()
    sources = onednn_plugin_sources()
    prefix = onednn_prefix()
    # the prefix and oneDNN's library are part of the key: a plugin links the oneDNN it was built with
    try:
        version = metadata.version("onednn-cpu-tbb")
    except metadata.PackageNotFoundError:  # a oneDNN put into the prefix by other means
        version = str((prefix / "lib/libdnnl.so.3").stat().st_size)
    oned = f"{prefix}|onednn-{version}"
    build_dir = cache_root("onednn", build_key("host", tvm_root, sources, extra=oned))
    plugin = build_dir / ONEDNN_PLUGIN
    if plugin.exists():
        return plugin
    log(f"building the oneDNN plugin in {build_dir}")
    _cmake_build(sources, build_dir, [f"-DEDGEOPT_TVM_ROOT={tvm_root}", f"-DEDGEOPT_ONEDNN_PREFIX={prefix}"])
    return plugin


def main(argv: list[str] | None = None) -> int:
    """``python -m edgeopt.compile.native_build fetch-aarch64 | build [host|aarch64]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgeopt.compile.native_build",
                                description="Set up the native runner edgeopt-run.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch-aarch64", help="download the aarch64 TVM runtime libraries (pip); "
                                         "prints the folder they are in")
    b = sub.add_parser("build", help="build edgeopt-run and print its path")
    b.add_argument("arch", nargs="?", default="host", choices=ARCHES)
    sub.add_parser("onednn", help="build the oneDNN kernel plugin and print its path")
    args = p.parse_args(argv)
    try:
        if args.command == "fetch-aarch64":
            print(fetch_aarch64_runtime(progress=True))
        elif args.command == "onednn":
            print(onednn_plugin(progress=True))
        else:
            print(runner_binary(args.arch, progress=True))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
