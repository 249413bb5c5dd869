"""A torch model that is trained must return one tensor: check that before a study writes anything.

Measurement takes a model's first output (``torch_runner.torch_outputs(...)[0]``), but training (the base
model on a labelled task, ``distill``, ``qat``) computes its loss on the whole output, and a
list or a dict there fails deep in torch (``cross_entropy(): argument 'input' must be Tensor,
not list``) after the output folder was made. One forward pass on zeros says it up front.

Example:
    >>> import torch
    >>> require_tensor_output(torch.nn.Linear(3, 2), (1, 3), "training on task digits")
"""

from __future__ import annotations

from edgeopt.core.errors import InputError

#: Steps whose loss is computed on the model's whole output.
TRAINING_STEPS = ("distill", "qat")


def require_tensor_output(module, input_shape: tuple, why: str, name: str = "the model") -> None:
    """``InputError`` naming what ``module`` returns unless it is a single tensor; ``why`` says
    what needs the tensor. A model that fails on zeros is left to the step that runs it."""
    import torch

    try:
        with torch.inference_mode():
            out = module(torch.zeros(tuple(input_shape)))
    except Exception:  # noqa: BLE001 - its own failure is reported where it is run, with context
        return
    if isinstance(out, torch.Tensor):
        return
    what = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (list, tuple, dict)) else "")
    raise InputError(f"{name} returns {what}, not a tensor; {why} needs one output tensor "
                     "(wrap the model so that forward returns the tensor to train on)")
