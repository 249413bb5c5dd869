"""torch module -> ExecuTorch program (``.pte``) with the XNNPACK delegate, fp32 or int8.

The PyTorch edge runtime's own flow: ``torch.export`` the module, lower the graph to XNNPACK
(``to_edge_transform_and_lower`` with ``XnnpackPartitioner``), serialize the program. int8 goes
through PT2E: ``prepare_pt2e`` with XNNPACK's quantizer (symmetric int8, per-channel weights),
calibration on the given samples, ``convert_pt2e``, then the same lowering; XNNPACK runs the
quantized convs and linears.

ExecuTorch is the optional ``executorch`` extra (``requirements/executorch.txt``).

Example:
    >>> import numpy as np, torch  # doctest: +SKIP
    >>> from edgeopt.compile.executorch_export import to_executorch  # doctest: +SKIP
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())  # doctest: +SKIP
    >>> art = to_executorch(m, np.zeros((1, 1, 8, 8), np.float32), "build/m-pte")  # doctest: +SKIP
    >>> art.format, art.files  # doctest: +SKIP
    ('pte', ['model.pte'])
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError, first_line
from edgeopt.core.tensors import TensorSpec
from edgeopt.runtimes.artifact import Artifact, write_artifact


def executorch_version() -> str:
    """The installed ExecuTorch release, or an ``InputError`` naming the extra that installs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        raise InputError("runtime 'executorch' needs the executorch package, which is not installed: "
                         "pip install -e .[executorch] (or pip install --no-deps -r "
                         "requirements/executorch.txt)") from None


def to_executorch(model: Any, example: np.ndarray, out: str | os.PathLike, *,
                  calibration: np.ndarray | None = None,
                  history: Sequence[dict] = ()) -> Artifact:
    """Export ``model`` (an ``nn.Module``) to an ExecuTorch artifact folder ``out``.

    Args:
        model: the torch module (left unchanged).
        example: one example input (its shape is the program's input shape).
        calibration: stacked samples ``(N, ...)`` for int8 (PT2E with XNNPACK's quantizer),
            fed in batches of the example's batch size; ``None`` keeps fp32.
        history: records carried into the manifest (a ``to_executorch`` record is added).
    """
    import torch

    version = executorch_version()
    module = copy.deepcopy(model).eval()
    x = (torch.from_numpy(np.ascontiguousarray(example)),)
    try:
        with warnings.catch_warnings():
            # torch's pytree pickling inside EXIR warns about its own LeafSpec once per copy:
            # three lines per export that tell a user nothing about their model
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            buffer, delegated = _lowered(module, x, calibration)
    except InputError:
        raise
    except Exception as e:  # torch.export / EXIR raise many types; name the first line
        raise InputError(f"executorch cannot export this model: {first_line(e)}") from None
    with torch.no_grad():
        outputs = module(*x)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    inputs = [TensorSpec("input", list(example.shape), str(example.dtype))]
    outs = [TensorSpec(f"output{i}" if i else "output", list(o.shape), str(o.detach().numpy().dtype))
            for i, o in enumerate(outputs)]
    record = {"name": "to_executorch",
              "config": {"delegate": "xnnpack", "int8": calibration is not None,
                         # the study's quantize options (method, equalization) do not apply here
                         "quantizer": "XNNPACKQuantizer, symmetric, per-channel" if calibration is not None else None},
              "metrics": {"delegated_subgraphs": delegated, "pte_bytes": len(buffer),
                          "calibration_samples": len(calibration) if calibration is not None else 0}}
    return write_artifact(out, lambda d: (d / "model.pte").write_bytes(buffer), format="pte",
                          files=["model.pte"], inputs=inputs, outputs=outs,
                          history=[*history, record], extra={"runtime_version": f"executorch {version}"})


def _lowered(module, x: tuple, calibration: np.ndarray | None):
    """``(.pte bytes, delegated subgraph count)`` of ``module`` lowered for ``x``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, x)
    if calibration is not None:
        program = _quantized(program, x, calibration)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    delegated = sum(1 for n in lowered.exported_program().graph.nodes
                    if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    return lowered.to_executorch().buffer, delegated


def _quantized(program, x: tuple, calibration: np.ndarray):
    """PT2E int8: XNNPACK's symmetric quantizer (per-channel weights), calibrated, converted."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calibration = np.asarray(calibration, np.float32)
    batch = x[0].shape[0]
    if calibration.shape[1:] != tuple(x[0].shape[1:]) or len(calibration) < batch:
        raise InputError(f"executorch int8 calibration samples have shape {calibration.shape}; expected "
                         f"(N >= {batch}, {', '.join(map(str, x[0].shape[1:]))})")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration) - batch + 1, batch):  # the program's batch size
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch])))
    return torch.export.export(convert_pt2e(prepared), x)
