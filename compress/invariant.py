"""The invariant every torch-level compression step keeps: the model it returns runs on the
example input and gives outputs of the same structure (tensor, tuple, list, dict keys) and the
same shapes as the original.

Example:
    >>> import torch
    >>> from edgeopt.compress.invariant import signature, broken
    >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)
    >>> x = (torch.zeros(1, 4),)
    >>> broken(b, x, signature(a, x))
    'output shape (1, 3) differs from the original (1, 2)'
"""

from __future__ import annotations

from typing import Any

from edgeopt.core.errors import first_line


def _sig(out: Any):
    import torch

    if isinstance(out, torch.Tensor):
        return ("tensor", tuple(out.shape), str(out.dtype))
    if isinstance(out, dict):
        return ("dict", tuple((k, _sig(v)) for k, v in out.items()))
    if isinstance(out, (tuple, list)):
        return (type(out).__name__, tuple(_sig(v) for v in out))
    return ("value", type(out).__name__)


def signature(model, args: tuple):
    """The structure and shapes of ``model(*args)``."""
    import torch

    with torch.inference_mode():
        return _sig(model(*args))


def _describe(a, b) -> str:
    """The first difference between two signatures, in words."""
    if a[0] != b[0]:
        return f"output is a {b[0]} where the original gives a {a[0]}"
    if a[0] == "tensor":
        if a[1] != b[1]:
            return f"output shape {b[1]} differs from the original {a[1]}"
        return f"output dtype {b[2]} differs from the original {a[2]}"
    if a[0] == "dict" and [k for k, _ in a[1]] != [k for k, _ in b[1]]:
        return f"output keys {[k for k, _ in b[1]]} differ from the original {[k for k, _ in a[1]]}"
    if len(a[1]) != len(b[1]):
        return f"output has {len(b[1])} items where the original has {len(a[1])}"
    for x, y in zip(a[1], b[1]):
        x, y = (x[1], y[1]) if a[0] == "dict" else (x, y)
        if x != y:
            return _describe(x, y)
    return "outputs differ"


def broken(model, args: tuple, reference) -> str | None:
    """``None`` when ``model`` runs on ``args`` and matches ``reference`` (``signature`` of the
    original); otherwise one line saying what failed."""
    try:
        sig = signature(model, args)
    except Exception as e:  # any failure to run is the thing this check exists to catch
        return f"the result fails to run: {type(e).__name__}: {first_line(e, 200)}"
    return None if sig == reference else _describe(reference, sig)
