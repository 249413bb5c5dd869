"""Build CUDA artifacts on a host with no GPU and no driver, holding compiled device code.

TVM puts compiled kernels into an artifact only when its CUDA runtime library can be loaded;
that library links ``libcuda.so.1`` (the driver), absent on a build host. Without it TVM keeps
CUDA *source* in the library and compiles it when the artifact is loaded, which needs the whole
TVM compiler on the device. Here the driver is replaced by a stand-in library with the driver's
soname that defines each driver function TVM's CUDA runtime imports, every one returning
CUDA_ERROR_NO_DEVICE (built once with the host C compiler into a cache folder; a build never
calls them). TVM's CUDA runtime then loads, and kernels are compiled by ``nvcc`` into a fatbin
for the target's ``arch`` (the same approach ran on an H100).

Example:
    >>> from edgeopt.compile.cuda_host import prepare_cuda_build  # doctest: +SKIP
    >>> prepare_cuda_build()  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgeopt.core.errors import InputError
from edgeopt.core.files import atomic_file, cache_root

_READY = False


def _cache_dir() -> Path:
    return cache_root("cuda-driver-standin")


def _driver_symbols(library: Path) -> list[str]:
    """The CUDA driver API functions ``library`` imports (``cu*``), read with binutils' nm."""
    nm = shutil.which("nm")
    if nm is None:
        raise InputError("building for cuda without a GPU driver needs nm (apt-get install binutils)")
    out = subprocess.run([nm, "-D", "--undefined-only", str(library)], capture_output=True,
                         text=True, check=True).stdout
    return sorted({line.split()[-1].split("@")[0] for line in out.splitlines()
                   if line.split() and line.split()[-1].startswith("cu")})


def _driver_or_standin(runtime_cuda: Path) -> None:
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)  # a real driver, when there is one
        return
    except OSError:
        pass
    # The stand-in defines every driver function TVM's CUDA runtime imports (the library binds them
    # at load time); each returns CUDA_ERROR_NO_DEVICE (100). A build never calls them.
    symbols = _driver_symbols(runtime_cuda)
    digest = hashlib.sha256("\n".join(symbols).encode()).hexdigest()[:12]
    standin = _cache_dir() / digest / "libcuda.so.1"
    if not standin.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise InputError("building for cuda without a GPU driver needs a C compiler (apt-get install gcc)")
        with tempfile.TemporaryDirectory(prefix="edgeopt-standin-") as scratch, \
                atomic_file(standin, suffix=".so") as out:
            src = Path(scratch) / "standin.c"
            src.write_text("/* stand-in for the CUDA driver on build hosts */\n"
                           + "".join(f"int {name}(void) {{ return 100; }}\n" for name in symbols))
            subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)],
                           check=True, capture_output=True)
    ctypes.CDLL(str(standin), mode=ctypes.RTLD_GLOBAL)


def prepare_cuda_build() -> None:
    """Make this process able to emit compiled CUDA kernels (idempotent)."""
    global _READY
    if _READY:
        return
    if shutil.which("nvcc") is None:
        raise InputError("building for cuda needs nvcc (the CUDA toolkit) on PATH")
    import tvm
    import tvm_ffi
    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        _driver_or_standin(runtime_dir / "libtvm_runtime_cuda.so")
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as e:
            raise InputError(f"cannot load TVM's CUDA runtime to build for cuda: {e}; it needs the "
                             "CUDA runtime libraries (libcudart) of the CUDA toolkit") from None
    from tvm.support.nvcc import compile_cuda

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code):  # nvcc, not NVRTC: NVRTC needs the cuda-python bindings
        return compile_cuda(code, target_format="fatbin", compiler="nvcc")

    del tvm
    _READY = True
