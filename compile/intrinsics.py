"""TVM's tensor intrinsics, registered only for the target kind at hand.

Tuning (``tune``) and the database check (``tuning_db``: tensorized traces name their
intrinsic, so replaying them needs it registered) both need this before MetaSchedule runs; it
sits below both.

Example:
    >>> from edgeopt.compile.intrinsics import load_tensor_intrinsics  # doctest: +SKIP
    >>> load_tensor_intrinsics("llvm")  # doctest: +SKIP
"""

from __future__ import annotations


#: The tensor intrinsics a target kind's schedules can use (modules of tvm.s_tir.tensor_intrin).
INTRINSICS_FOR = {"llvm": ("x86", "arm_cpu", "riscv_cpu"), "cuda": ("cuda",), "rocm": ("rocm",)}


def load_tensor_intrinsics(kind: str) -> None:
    """Register only the tensor intrinsics ``kind`` can use, before MetaSchedule imports them all.

    ``import tvm.s_tir.tensor_intrin`` (done by every MetaSchedule TuneContext) registers the
    intrinsics of every backend by parsing TVMScript: 45-60 s on a 2-core CPU, 27 s of
    it CUDA's. Put the package in ``sys.modules`` without running its ``__init__`` and import
    the modules the target needs (~1.5 s for CPU); TVM's own import then finds it loaded.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    for sub in INTRINSICS_FOR.get(kind, ()):
        importlib.import_module(f"{name}.{sub}")
    if kind == "llvm":
        from .blocked_layout import register_vnni_intrinsic

        register_vnni_intrinsic()  # TVM 0.27's own fails to build with LLVM 22
