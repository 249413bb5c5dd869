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
            plugin's OpenMP threads too.
        plugins: kernel libraries the model calls (the artifact's ``plugins``, e.g. the oneDNN
            plugin), loaded before the model.
    """

    runtime = "tvm"

    def __init__(self, library: str | os.PathLike, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], device: str = "cpu", threads: int | None = None,
                 plugins: Sequence[str | os.PathLike] = ()):
        if plugins:
            # before `import tvm`, which imports torch and with it torch's libgomp: the plugin
            # shares that one (same soname), and libgomp reads the policy when it is loaded
            prefer_passive_openmp()
        import tvm
        from tvm.runtime.vm import VirtualMachine

        super().__init__(inputs, outputs, threads)
        if device not in ("cpu", "cuda"):
            raise InputError(f"TVM device must be 'cpu' or 'cuda', got {device!r}")
        for plugin in plugins:
            load_plugin(plugin, threads)
        if plugins:
            # TVM pins the calling thread to a core when it sizes its pool, and the plugin's
            # OpenMP threads inherit that mask: both would share one core (ResNet-18 on oneDNN:
            # 18 ms -> 168 ms on 2 cores). Unpinned, the OS spreads both pools.
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
        self._sync = device != "cpu"
        self._tvm = tvm

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        return [self._tvm.runtime.tensor(a, device=self.device) for a in arrays]

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

#: What GNU OpenMP threads do when they wait (at a barrier, for work): Debian's oneDNN, which
#: the plugin links, runs its primitives on libgomp, whose default spins before sleeping. Under
#: a co-located load a spinning thread holds a core that its descheduled sibling needs, and the
#: barrier waits for that sibling: ResNet-18 int8 took 520 ms median on a loaded 2-core machine
#: (40 ms passive) and a TVM row of ``make demo`` showed a p90 of 33.8 ms against a 0.06 ms
#: median. Passive waiting gives the core back (benchmarks/RESULTS.md, "latency under load"); a
#: bounded spin before sleeping (``OPENMP_SPIN_COUNT`` iterations, a few microseconds: the gap
#: between two oneDNN calls of a model) keeps the quiet speed, as sleeping at once wakes the
#: sibling through the kernel on every call: MobileNetV2 int8 (52 calls) took 6.1 ms with no spin,
#: 2.6 ms with it, while ResNet-18's loaded p99 / quiet p50 stayed as passive's.
OPENMP_WAIT_POLICY = "PASSIVE"
OPENMP_SPIN_COUNT = "1000"


def openmp_environment(environ) -> dict:
    """The GNU OpenMP variables edgeopt sets for the plugin where the user chose neither:
    ``{"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}`` (empty when one is set).

    >>> openmp_environment({})
    {'OMP_WAIT_POLICY': 'PASSIVE', 'GOMP_SPINCOUNT': '1000'}
    >>> openmp_environment({"OMP_WAIT_POLICY": "active"})
    {}
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"OMP_WAIT_POLICY": OPENMP_WAIT_POLICY, "GOMP_SPINCOUNT": OPENMP_SPIN_COUNT}


# Set when this process's libgomp was loaded before the policy was: it spins whatever the variable says.
_OPENMP_LOADED_SPINNING = False


def libgomp_loaded() -> bool:
    """Whether GNU OpenMP (``libgomp``: the plugin's, or torch's copy of it) is in this process."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:  # not Linux: no libgomp to configure
        return False


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` with a bounded spin (``GOMP_SPINCOUNT``) for GNU OpenMP
    unless a policy or spin count is already chosen (the user's own wins); True when the
    process runs with them.

    libgomp reads the variable once, when it is loaded: by the oneDNN plugin, or by ``import
    torch`` (torch's ``libgomp.so.1`` has the same soname, so the plugin then shares it). The
    CLI calls this first thing; a Python program that imported torch before loading a oneDNN
    artifact gets a warning, as its OpenMP threads spin: set the variable before importing
    torch (``os.environ["OMP_WAIT_POLICY"] = "PASSIVE"``) or call this first.
    """
    global _OPENMP_LOADED_SPINNING
    ours = openmp_environment(os.environ)
    if not ours:
        chosen = os.environ.get("OMP_WAIT_POLICY", "")
        return chosen.strip().upper() == "PASSIVE" and not _OPENMP_LOADED_SPINNING
    _OPENMP_LOADED_SPINNING = libgomp_loaded()
    os.environ.update(ours)  # child processes (edgeopt-run) too
    if _OPENMP_LOADED_SPINNING:
        import warnings

        warnings.warn("GNU OpenMP was loaded (by torch?) before OMP_WAIT_POLICY=PASSIVE could be set: "
                      "the oneDNN plugin's threads spin while they wait, and latency under a "
                      "co-located load suffers; set it before importing torch", RuntimeWarning,
                      stacklevel=3)
        return False
    return True


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
            hint = " (install oneDNN: apt-get install libdnnl2)" if "dnnl" in str(e) else ""
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
