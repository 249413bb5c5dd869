"""torch eager backend of the runner interface.

Runs an in-memory ``nn.Module`` or a ``torch.export`` program saved as ``.pt2`` (never an
arbitrary pickle). torch is imported only when this runner is created.

Example:
    >>> import torch  # doctest: +SKIP
    >>> from edgeopt.runtimes.torch_runner import TorchRunner  # doctest: +SKIP
    >>> r = TorchRunner(torch.nn.Linear(4, 2), example=[torch.zeros(1, 4)])  # doctest: +SKIP
    >>> r.run(r.example_inputs())[0].shape  # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.core.tensors import TensorSpec
from .base import Runner, example_inputs
from edgeopt.core.errors import InputError


class TorchRunner(Runner):
    """Eager PyTorch inference (``torch.inference_mode``) on CPU.

    Args:
        model: an ``nn.Module``, or the path of a ``.pt2`` file written by ``torch.export.save``.
        example: example inputs (tensors); the io spec is taken from them and from one run.
        inputs: io spec of the inputs, when known (for a ``.pt2`` it is read from the program).
        threads: ``torch.set_num_threads`` for the process (``None`` leaves it as it is).
    """

    runtime = "torch"

    def __init__(self, model: Any, example: Sequence[Any] | None = None,
                 inputs: Sequence[TensorSpec] | None = None, threads: int | None = None):
        import torch

        exported = isinstance(model, (str, os.PathLike))
        if exported:
            model, saved_example = _load_pt2(Path(model))
            example = example if example is not None else saved_example
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"the torch runtime needs an nn.Module or a .pt2 file, got {type(model).__name__}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        # A torch.export program is already in inference form (and refuses .eval()).
        self.model = model if exported else model.eval()
        if inputs is None:
            if example is None:
                raise InputError("the torch runtime needs example inputs or an io spec to know the input shapes")
            inputs = [TensorSpec(f"input{i}" if i else "input", list(t.shape), _np_dtype(t.dtype))
                      for i, t in enumerate(example)]
        outputs = []
        if example is not None:
            with torch.inference_mode():
                out = self.model(*example)
            outs = out if isinstance(out, (tuple, list)) else [out]
            outputs = [TensorSpec(f"output{i}", list(o.shape), _np_dtype(o.dtype)) for i, o in enumerate(outs)]
        super().__init__(inputs, outputs, threads)
        self._torch = torch

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        return [self._torch.from_numpy(a) for a in arrays]

    def _call(self, bound: Any) -> Sequence[Any]:
        with self._torch.inference_mode():
            out = self.model(*bound)
        return out if isinstance(out, (tuple, list)) else [out]

    def _to_numpy(self, value: Any) -> np.ndarray:
        return value.detach().cpu().numpy()


def torch_outputs(model: Any, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of a torch model over ``x``, run in batches of ``batch_size`` under
    ``torch.inference_mode``: one array (N, ...) per output, in ``tree_leaves`` order (a tensor,
    a tuple/list or a dict of them). ``[0]`` is the first output (the logits of a classifier).

    The one batched forward pass of edgeopt: training-time evaluation, the fp32 reference that
    variants are compared with, and QAT's fake-quantized validation all use it.

    Example:
        >>> import numpy as np, torch  # doctest: +SKIP
        >>> [o.shape for o in torch_outputs(torch.nn.Linear(4, 2), np.zeros((5, 4), "float32"), 2)]  # doctest: +SKIP
        [(5, 2)]
    """
    import torch
    from torch.utils._pytree import tree_leaves

    parts: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            leaves = tree_leaves(model(torch.from_numpy(x[s:s + batch_size])))
            parts = parts or [[] for _ in leaves]
            for part, leaf in zip(parts, leaves):
                part.append(leaf.numpy())
    return [np.concatenate(p) for p in parts]


def _np_dtype(torch_dtype) -> str:
    return str(torch_dtype).replace("torch.", "")


def _load_pt2(path: Path):
    """Load a ``torch.export`` program's module and its example inputs; refuse pickles by design."""
    program = load_program(path)
    example = list(program.example_inputs[0]) if program.example_inputs else None
    return program.module(), example


def load_program(path: Path):
    """The ``torch.export.ExportedProgram`` saved at ``path`` (a ``.pt2`` file); pickles are
    refused by design, anything else unloadable is an ``InputError``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix != ".pt2":
        raise InputError(
            f"{str(path)!r}: the torch runtime loads only torch.export programs (.pt2); "
            "pickled .pt/.pth files are never unpickled. Produce one with "
            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')")
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise InputError(f"{str(path)!r} is not a loadable torch.export program: {e}") from None
    return program
