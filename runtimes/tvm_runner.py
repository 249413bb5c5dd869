"""TVM backend of the runner interface: a Relax VM over an exported artifact library.

Only the TVM runtime is used here (``tvm.runtime``); the compiler lives in
``edgeopt.compile.tvm_build``. TVM is imported when the runner is created, never at
``import edgeopt.runtimes``.

Example:
    >>> from edgeopt.runtimes import load  # doctest: +SKIP
    >>> r = load("build/demo/fp32-tvm-cpu")        # an artifact written by edgeopt.compile  # doctest: +SKIP
    >>> r.run(r.example_inputs())[0].shape  # doctest: +SKIP
    (1, 10)
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from edgeopt.core.tensors import TensorSpec
from .base import Runner, example_inputs
from edgeopt.core.errors import InputError, last_line


class TvmRunner(Runner):
    """Relax ``VirtualMachine`` on a library written by ``export_library``.

    Args:
        library: path of the shared library (``model.so``).
        inputs, outputs: io spec from the artifact manifest.
        device: ``"cpu"`` or ``"cuda"``.
        threads: TVM thread-pool size (``None``: TVM's default, one per core); the oneDNN
            plugin's too (the TBB arena its calls run in: the calling thread and threads - 1
            TBB workers).
        plugins: kernel libraries the model calls (the artifact's ``plugins``, e.g. the oneDNN
            plugin), loaded before the model.
    """

    runtime = "tvm"

    def __init__(self, library: str | os.PathLike, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], device: str = "cpu", threads: int | None = None,
                 plugins: Sequence[str | os.PathLike] = ()):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        super().__init__(inputs, outputs, threads)
        if device not in ("cpu", "cuda"):
            raise InputError(f"TVM device must be 'cpu' or 'cuda', got {device!r}")
        for plugin in plugins:
            load_plugin(plugin, threads)
        if plugins:
            # TVM pins its pool's threads to cores when it sizes the pool; oneDNN's worker threads
            # then share cores with pinned ones the OS cannot move (with oneDNN 2.6's OpenMP
            # threads, which inherited the pin, ResNet-18 went 18 ms -> 168 ms on 2 cores).
            # Unpinned, the OS places TVM's pool and the plugin's TBB workers together.
            os.environ.setdefault("TVM_BIND_THREADS", "0")
        if threads is not None:
            # TVM sizes its thread pool once per process, from TVM_NUM_THREADS or else half the
            # logical CPUs (it assumes hyper-threading): on a 2-vCPU machine that is 1 thread,
            # and config_threadpool cannot add workers later (ResNet-18 int8: 10.4 ms on 1 thread,
            # 5.2 ms on 2). The variable must be set before the pool's first use.
            os.environ.setdefault("TVM_NUM_THREADS", str(int(threads)))
            # Affinity mode 1 ("big cores"): all cores on a homogeneous CPU.
            tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
        if device == "cuda":
            _load_cuda_runtime(tvm)
        self.device = tvm.cpu(0) if device == "cpu" else tvm.cuda(0)
        # Before loading: without a driver the library's CUDA module cannot even be loaded, and
        # TVM's own message ("a loader of that name is not registered") says nothing useful.
        if device == "cuda" and not _cuda_usable(self.device):
            raise InputError(f"{str(library)!r} is a CUDA artifact and this host has no usable CUDA "
                             "device (GPU and driver); run it on a GPU machine")
        try:
            lib = tvm.runtime.load_module(str(library))
        except Exception as e:
            raise InputError(f"TVM cannot load {str(library)!r}: {last_line(e)}") from None
        self.vm = VirtualMachine(lib, self.device)
        if plugins:
            import weakref

            # the plugin holds this model's weights with its cached primitives: release them with it
            weakref.finalize(self, _clear_plugin_caches)
        self._main = self.vm["main"]
        self._inputs: list = []  # _bind's input tensors
        self._sync = device != "cpu"
        self._tvm = tvm

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        # One tensor per input, kept and copied into on every run: a fresh one per run is a new
        # allocation whose pages fault in again (ResNet-18 int8 on 2 cores: 0.02-0.08 ms a run).
        # A runner is one VM, which serves one call at a time, so one set of inputs is enough.
        kept = self._inputs
        for i, a in enumerate(arrays):
            if i == len(kept):
                kept.append(None)
            t = kept[i]
            if t is None or tuple(t.shape) != a.shape or str(t.dtype) != str(a.dtype):
                t = kept[i] = self._tvm.runtime.empty(a.shape, str(a.dtype), self.device)
            t.copyfrom(a)
        return kept[:len(arrays)]

    def _call(self, bound: Any) -> Sequence[Any]:
        out = self._main(*bound)
        if self._sync:
            self.device.sync()  # GPU launches are asynchronous: time the work, not the launch
        if isinstance(out, self._tvm.runtime.Tensor):
            return [out]
        return list(out)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return value.numpy()


_LOADED_PLUGINS: dict[str, object] = {}


def load_plugin(path: str | os.PathLike, threads: int | None = None) -> None:
    """Load a kernel plugin library (RTLD_GLOBAL: it registers TVM global functions the model
    calls). The same library (by content) is loaded once per process, whichever artifact
    carries it.

    Raises:
        InputError: the library is missing or cannot be loaded (e.g. oneDNN is not installed).
    """
    import ctypes
    import hashlib
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise InputError(f"kernel plugin {str(path)!r} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest not in _LOADED_PLUGINS:
        try:
            _LOADED_PLUGINS[digest] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            hint = (" (install oneDNN 3.x and TBB: pip install -r requirements/onednn.txt)"
                    if any(k in str(e) for k in ("dnnl", "tbb", "libimf", "libintlc")) else "")
            raise InputError(f"cannot load kernel plugin {str(path)!r}: {e}{hint}") from None
    _check_plugin_version(_LOADED_PLUGINS[digest], path)
    if threads is not None:
        import tvm

        set_threads = tvm.get_global_func("edgeopt.onednn.set_threads", allow_missing=True)
        if set_threads is not None:
            set_threads(int(threads))


def _check_plugin_version(library, path) -> None:
    """``InputError`` when the plugin serving this process (the first copy loaded registers the
    functions) is older than ``library``, the artifact's own copy: the older one would reject
    or, worse, ignore what a newer build asks of it (a bf16 weight, a fused activation)."""
    import ctypes

    import tvm

    own = getattr(library, "edgeopt_onednn_plugin_version", None)  # copies before it had none
    serving = tvm.get_global_func("edgeopt.onednn.version", allow_missing=True)
    if own is None or serving is None:
        return
    own.restype = ctypes.c_int64
    mine, theirs = int(own()), int(serving())
    if theirs < mine:
        raise InputError(f"kernel plugin {str(path)!r} is version {mine}, but version {theirs}, loaded earlier "
                         "in this process by another artifact, serves every artifact and is older; run this "
                         "artifact in a process of its own, or rebuild the older artifact")


def _clear_plugin_caches() -> None:
    import tvm

    clear = tvm.get_global_func("edgeopt.onednn.clear_cache", allow_missing=True)
    if clear is not None:
        clear()


def _load_cuda_runtime(tvm) -> None:
    """Load TVM's CUDA device API (``libtvm_runtime_cuda.so``), which ``import tvm`` leaves out:
    with the runtime-only TVM a GPU machine carries, ``tvm.cuda(0)`` does not exist without it."""
    import ctypes
    from pathlib import Path

    library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if library.exists():
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError:  # no driver or CUDA runtime here: _cuda_usable reports it
            pass


def _cuda_usable(device) -> bool:
    try:
        return bool(device.exist)
    except Exception:  # no CUDA runtime library at all
        return False
