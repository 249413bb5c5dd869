"""Models loaded from ``.pt2`` files (``torch.export`` programs) in torch-level steps.

A program's ``.module()`` is a flat graph of ATen calls: its convolutions and linear layers are
``aten.conv2d``/``aten.linear`` calls on parameters, not ``nn.Conv2d``/``nn.Linear`` modules,
so structural edits (channel pruning, factorization) have nothing to edit and used to finish
"successfully" having changed nothing. ``refuse_exported`` turns that into an ``InputError``
that says what to pass instead. The graph module also refuses ``.eval()``/``.train()``, which
export and distillation call; ``as_module`` wraps it in an ``nn.Module`` that accepts them (the
program's BatchNorm/Dropout are already frozen in inference form), so those steps work on it.

Example:
    >>> import torch
    >>> from edgeopt.compress.pt2 import is_exported_program_module
    >>> m = torch.nn.Linear(2, 2)
    >>> is_exported_program_module(m)
    False
    >>> wrapped = as_module(torch.export.export(m, (torch.zeros(1, 2),)).module())
    >>> is_exported_program_module(wrapped), wrapped.eval()(torch.zeros(1, 2)).shape
    (True, torch.Size([1, 2]))
"""

from __future__ import annotations

from edgeopt.core.errors import InputError


def as_module(program_module):
    """An ``nn.Module`` around a ``torch.export`` program's ``.module()`` that accepts
    ``eval()``/``train()`` (see module docstring)."""
    import torch

    class ExportedProgramModule(torch.nn.Module):
        """Runs a torch.export program; ``train``/``eval`` set this wrapper's flag only, since
        the program refuses them and its normalization/dropout are frozen already."""

        def __init__(self, program):
            super().__init__()
            self.program = program

        def forward(self, *args):
            return self.program(*args)

        def train(self, mode: bool = True):
            self.training = mode
            return self

    return ExportedProgramModule(program_module)


def is_exported_program_module(model) -> bool:
    """Whether ``model`` is the graph module of a ``torch.export`` program (ATen-level calls),
    bare or wrapped by ``as_module``."""
    import torch

    model = getattr(model, "program", model)
    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
               for node in model.graph.nodes)


def refuse_exported(model, step: str) -> None:
    """Raise ``InputError`` when ``model`` came from a ``.pt2`` program (see module docstring)."""
    if not is_exported_program_module(model):
        return
    why = {"prune": "its graph holds ATen calls, no nn.Conv2d/nn.Linear layers to prune",
           "lowrank": "its graph holds ATen calls, no nn.Conv2d/nn.Linear layers to factorize",
           "distill": "the program is frozen for inference (fixed batch size, BatchNorm in "
                      "inference form), so it cannot be trained"}.get(step, "it cannot be edited")
    raise InputError(f"{step} needs the model's nn.Module (zoo:NAME or module.path:factory), not a "
                     f".pt2 torch.export program: {why}")
