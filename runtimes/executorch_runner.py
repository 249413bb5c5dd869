"""ExecuTorch backend of the runner interface: a ``.pte`` program (XNNPACK delegate) run through
ExecuTorch's Python bindings, the runtime an app embeds on a phone or board.

The ``executorch`` package is an optional extra (``requirements/executorch.txt``).

Example:
    >>> from edgeopt.runtimes.executorch_runner import ExecuTorchRunner  # doctest: +SKIP
    >>> r = ExecuTorchRunner("build/m-pte/model.pte", threads=2)  # doctest: +SKIP
    >>> r.run(r.example_inputs())[0].shape  # doctest: +SKIP
    (1, 4, 6, 6)
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError
from edgeopt.core.tensors import TensorSpec

from .base import Runner, example_inputs


def executorch_bindings():
    """ExecuTorch's runtime bindings, or an ``InputError`` naming the extra that installs them."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        raise InputError("runtime 'executorch' needs the executorch package, which is not installed: "
                         "pip install -e .[executorch] (or pip install --no-deps -r "
                         "requirements/executorch.txt)") from None
    return portable_lib


class ExecuTorchRunner(Runner):
    """One ``.pte`` program's ``forward`` method.

    Args:
        path: the ``.pte`` file.
        inputs, outputs: the io spec (an artifact's manifest); read from the program's method
            metadata when not given.
        threads: XNNPACK's thread pool size (process-wide in ExecuTorch).
    """

    runtime = "executorch"

    def __init__(self, path: str | os.PathLike, inputs: Sequence[TensorSpec] | None = None,
                 outputs: Sequence[TensorSpec] | None = None, threads: int | None = None):
        lib = executorch_bindings()
        try:
            self.module = lib._load_for_executorch(str(path))
        except Exception as e:  # the bindings raise RuntimeError with the loader's status
            raise InputError(f"executorch cannot load {str(path)!r}: {e}") from None
        if inputs is None or outputs is None:
            meta = self.module.method_meta("forward")
            inputs = [_spec(f"input{i}" if i else "input", meta.input_tensor_meta(i))
                      for i in range(meta.num_inputs())]
            outputs = [_spec(f"output{i}" if i else "output", meta.output_tensor_meta(i))
                       for i in range(meta.num_outputs())]
        super().__init__(inputs, outputs, threads)
        if threads is not None:
            lib._unsafe_reset_threadpool(int(threads))
        self.path = str(path)

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        import torch

        return tuple(torch.from_numpy(a) for a in arrays)

    def _call(self, bound: Any) -> Sequence[Any]:
        return self.module.forward(bound)

    def _to_numpy(self, value: Any) -> np.ndarray:
        # the program reuses its output memory on the next call: copy
        return value.numpy().copy()


def _spec(name: str, meta) -> TensorSpec:
    import torch

    dtype = str(torch.empty(0, dtype=meta.dtype()).numpy().dtype) if hasattr(meta, "dtype") else "float32"
    return TensorSpec(name, list(meta.sizes()), dtype)
