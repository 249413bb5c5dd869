"""Resolve a MODEL argument to a torch module: ``zoo:NAME``, ``module.path:factory`` or ``.pt2``.

User files are never unpickled: a ``.pt``/``.pth`` MODEL is refused with the way to make a
``.pt2`` (``torch.export``) instead. A zoo model or a factory can take trained weights from a
state dict file (``weights=``), read with ``torch.load(..., weights_only=True)``: tensors and
plain containers only, so a file that needs full unpickling is refused.

Example:
    >>> from edgeopt.pipeline.models import load_model, parse_shape
    >>> m = load_model("zoo:digits_cnn")
    >>> m.input_shape, parse_shape("1,1,32,32")
    ((1, 1, 32, 32), (1, 1, 32, 32))
    >>> load_model("zoo:resnet18", input_shape="1,3,64,64").input_shape
    (1, 3, 64, 64)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.errors import InputError, first_line
from edgeopt.core.factory import resolve_factory

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
FILE_SUFFIXES = (".pt2", ".onnx") + PICKLE_SUFFIXES


@dataclass
class LoadedModel:
    """A torch module and the input shape it is meant for (``None`` when unknown)."""

    module: Any
    input_shape: tuple | None
    source: str


def parse_shape(text: str) -> tuple:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``; ``InputError`` for anything else."""
    try:
        shape = tuple(int(p) for p in str(text).replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"input shape {text!r} is malformed; expected comma-separated "
                         "positive integers such as 1,3,32,32") from None
    if not shape or any(d < 1 for d in shape):
        raise InputError(f"input shape {text!r} must have positive dimensions, e.g. 1,3,32,32")
    return shape


def is_model_file(spec: str) -> bool:
    return spec.endswith(FILE_SUFFIXES) or os.sep in spec or os.path.exists(spec)


def load_model(spec: str, seed: int = 0, weights: str | os.PathLike | None = None,
               input_shape: tuple | str | None = None) -> LoadedModel:
    """Load a torch model from a MODEL argument (see module docstring).

    Args:
        spec: ``zoo:NAME``, ``module.path:factory`` or a ``.pt2`` file.
        seed: seeds a zoo model's or a factory's initial weights (torch's RNG is seeded around
            the call and restored after, so the same spec and seed give the same weights in
            every process).
        weights: a state dict file (``.pth``/``.pt``, ``torch.save(model.state_dict(), path)``)
            loaded into a zoo or factory model; ``InputError`` naming the missing / unexpected
            keys or the first shape mismatch when it does not fit the module.
        input_shape: the input shape (tuple or ``"1,3,32,32"``). The resolved
            ``LoadedModel.input_shape`` is this when given, else the module's ``input_shape``
            attribute (or a ``.pt2``'s example input), else the zoo entry's, else ``None``.

    Example:
        >>> import tempfile, os, torch
        >>> from edgeopt.pipeline.models import load_model
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pth")
        >>> torch.save(load_model("zoo:digits_cnn", seed=1).module.state_dict(), path)
        >>> m = load_model("zoo:digits_cnn", weights=path)
        >>> torch.equal(m.module.classifier[3].bias, load_model("zoo:digits_cnn", seed=1).module.classifier[3].bias)
        True
    """
    explicit = None
    if input_shape is not None:
        explicit = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
        if not explicit or any(not isinstance(d, int) or d < 1 for d in explicit):
            raise InputError(f"input shape {input_shape!r} must be positive integers, e.g. 1,3,32,32")
    zoo_shape = None
    if spec.startswith("zoo:"):
        from .zoo import ZOO, create

        name = spec[4:]
        module = create(name, seed=seed)
        zoo_shape = ZOO[name].input_shape
        attr = getattr(module, "input_shape", None)
        loaded = LoadedModel(module, tuple(attr) if attr else None, spec)
    elif is_model_file(spec):
        if weights is not None:
            raise InputError(f"weights apply to zoo:NAME and module.path:factory models; {spec!r} "
                             "is a file that holds its own weights")
        loaded = _load_file(Path(spec))
    elif ":" in spec:
        loaded = _load_factory(spec, seed)
    else:
        raise InputError(f"model {spec!r} is not understood; expected zoo:NAME, module.path:factory, "
                         "or a .pt2 file")
    if weights is not None:
        load_weights(loaded.module, weights)
        loaded.source = f"{spec} + {weights}"
    loaded.input_shape = explicit or loaded.input_shape or zoo_shape
    return loaded


def load_weights(module, path: str | os.PathLike) -> None:
    """Load the state dict file ``path`` into ``module`` (strict), without full unpickling.

    Accepts a plain state dict, or a checkpoint dict holding one under ``state_dict``,
    ``model`` or ``model_state``; a ``module.`` prefix (DataParallel) is dropped when the module has none.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain containers (a whole pickled
        # module, custom classes): loading those would run arbitrary code from the file.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise InputError(f"weights file {str(path)!r} is not a torch state dict file: it is "
                             "not a readable torch.save file") from None
        raise InputError(f"weights file {str(path)!r} needs full unpickling (it holds a "
                         f"{found.group(1)} object), which edgeopt refuses; save only the tensors: "
                         "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        # (KeyError: pickle reading a text file takes its first byte for an opcode, "KeyError: 101")
        first = "not a torch.save file" if isinstance(e, KeyError) else first_line(e)
        raise InputError(f"weights file {str(path)!r} is not a torch state dict file: {first}") from None
    state = obj
    if isinstance(obj, dict) and not _is_state_dict(obj):
        inner = [k for k in ("state_dict", "model", "model_state") if isinstance(obj.get(k), dict)]
        state = obj[inner[0]] if inner else obj
    if not isinstance(state, dict) or not _is_state_dict(state):
        raise InputError(f"weights file {str(path)!r} holds {type(obj).__name__}, not a state dict "
                         "(a mapping of parameter names to tensors)")
    expected = module.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_some(unexpected)}")
        raise InputError(f"weights file {str(path)!r} does not match {type(module).__name__}: "
                         f"{'; '.join(parts)}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(f"weights file {str(path)!r} does not match {type(module).__name__}: "
                             f"{k!r} has shape {tuple(state[k].shape)} in the file, "
                             f"{tuple(v.shape)} in the model")
    module.load_state_dict(state, strict=True)


def _is_state_dict(d: dict) -> bool:
    import torch

    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _some(keys: list, n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"{shown} (+{len(keys) - n} more)" if len(keys) > n else shown


def _load_file(path: Path) -> LoadedModel:
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix in PICKLE_SUFFIXES:
        raise InputError(
            f"{str(path)!r} looks like a pickle ({path.suffix}); edgeopt never unpickles user "
            "files. Save a torch.export program instead: "
            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2'), or, for a "
            "state dict, pass it as weights of a zoo:NAME or module.path:factory model")
    if path.suffix == ".onnx":
        raise InputError(f"{str(path)!r} is an ONNX model; this step needs a torch model "
                         "(zoo:NAME, module.path:factory or .pt2)")
    if path.suffix != ".pt2":
        raise InputError(f"{str(path)!r}: unknown model file type; expected a .pt2 file")
    from edgeopt.compress.pt2 import lift_program
    from edgeopt.runtimes.torch_runner import load_program

    program = load_program(path)
    # The program's graph has ATen calls on bare parameters; lifted, its Conv/Linear/norm
    # layers are modules again, which every torch-level step edits (compress/pt2.py).
    module = lift_program(program)
    example = program.example_inputs[0] if program.example_inputs else None
    shape = tuple(example[0].shape) if example else None
    return LoadedModel(module, shape, str(path))


def _load_factory(spec: str, seed: int = 0) -> LoadedModel:
    import torch

    factory, _ = resolve_factory(spec, "model", "a torch.nn.Module")
    attr = spec.partition(":")[2]
    try:
        # Seeded like a zoo model: an unseeded factory draws its initial weights from whatever
        # state torch's RNG is in, so one recipe trained to a different model in each run.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = factory()
    except Exception as e:
        raise InputError(f"model {spec!r}: {attr}() raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"model {spec!r}: {attr}() returned {type(module).__name__}, "
                         "expected a torch.nn.Module")
    shape = getattr(module, "input_shape", None)
    return LoadedModel(module.eval(), tuple(shape) if shape else None, spec)


def example_input(shape: tuple, seed: int = 0):
    """A seeded standard-normal float32 input of ``shape``."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def model_and_example(spec: str, input_shape: tuple | str | None = None, seed: int = 0,
                      weights: str | os.PathLike | None = None):
    """``(module, example input)`` for a MODEL argument; ``InputError`` when no shape is known."""
    loaded = load_model(spec, seed=seed, weights=weights, input_shape=input_shape)
    if loaded.input_shape is None:
        raise InputError(f"model {spec!r} does not say its input shape; pass --input-shape "
                         "(or input_shape in a recipe)")
    x = example_input(loaded.input_shape, seed)
    check_forward(loaded.module, x, spec)
    return loaded.module, x


def check_forward(module, x, spec: str) -> None:
    """Run ``module`` once on ``x``: an input the model rejects is an ``InputError`` naming the
    shape, before any step starts."""
    import torch

    try:
        with torch.inference_mode():
            module(torch.from_numpy(x))
    except Exception as e:  # the model's own shape checks raise anything
        raise InputError(f"model {spec!r} rejects an input of shape {tuple(x.shape)}: "
                         f"{type(e).__name__}: {first_line(e)}; pass an --input-shape it accepts") from None

