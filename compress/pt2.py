"""Models loaded from ``.pt2`` files (``torch.export`` programs) in torch-level steps.

A program's ``.module()`` is a flat graph of ATen calls: its convolutions and linear layers are
``aten.conv2d``/``aten.linear`` calls on parameters, not ``nn.Conv2d``/``nn.Linear`` modules,
so structural edits (channel pruning, factorization) have nothing to edit and used to finish
"successfully" having changed nothing. ``refuse_exported`` turns that into an ``InputError``
that says what to pass instead.

Example:
    >>> import torch
    >>> from edgeopt.compress.pt2 import is_exported_program_module
    >>> m = torch.nn.Linear(2, 2)
    >>> is_exported_program_module(m)
    False
    >>> is_exported_program_module(torch.export.export(m, (torch.zeros(1, 2),)).module())
    True
"""

from __future__ import annotations

from edgeopt.core.errors import InputError


def is_exported_program_module(model) -> bool:
    """Whether ``model`` is the graph module of a ``torch.export`` program (ATen-level calls)."""
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
               for node in model.graph.nodes)


def refuse_exported(model, step: str) -> None:
    """Raise ``InputError`` when ``model`` came from a ``.pt2`` program (see module docstring)."""
    if is_exported_program_module(model):
        raise InputError(
            f"{step} needs the model's nn.Module (zoo:NAME or module.path:factory), not a .pt2 "
            "torch.export program: its graph holds ATen calls, no nn.Conv2d/nn.Linear layers to "
            f"{'prune' if step == 'prune' else 'factorize'}")
