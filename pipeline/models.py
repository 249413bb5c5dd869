"""Resolve a MODEL argument to a torch module: ``zoo:NAME``, ``module.path:factory`` or ``.pt2``.

User files are never unpickled: ``.pt``/``.pth`` pickles are refused with the way to make a
``.pt2`` (``torch.export``) instead.

Example:
    >>> from edgeopt.pipeline.models import load_model, parse_shape
    >>> m = load_model("zoo:digits_cnn")
    >>> m.input_shape, parse_shape("1,1,32,32")
    ((1, 1, 32, 32), (1, 1, 32, 32))
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.errors import InputError

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


def load_model(spec: str, seed: int = 0, input_shape: tuple | str | None = None) -> LoadedModel:
    """Load a torch model from a MODEL argument (see module docstring).

    ``input_shape`` (a tuple or ``"1,3,32,32"``), when given, wins over the shape the model
    declares; ``LoadedModel.input_shape`` is the resolved one (``None`` when nobody says).
    """
    loaded = _load(spec, seed)
    if input_shape is not None:
        loaded.input_shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    return loaded


def _load(spec: str, seed: int) -> LoadedModel:
    if spec.startswith("zoo:"):
        from .zoo import ZOO, create

        name = spec[4:]
        module = create(name, seed=seed)
        return LoadedModel(module, ZOO[name].input_shape, spec)
    if is_model_file(spec):
        return _load_file(Path(spec))
    if ":" in spec:
        return _load_factory(spec)
    raise InputError(f"model {spec!r} is not understood; expected zoo:NAME, module.path:factory, "
                     "or a .pt2 file")


def _load_file(path: Path) -> LoadedModel:
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix in PICKLE_SUFFIXES:
        raise InputError(
            f"{str(path)!r} looks like a pickle ({path.suffix}); edgeopt never unpickles user "
            "files. Save a torch.export program instead: "
            "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')")
    if path.suffix == ".onnx":
        raise InputError(f"{str(path)!r} is an ONNX model; this step needs a torch model "
                         "(zoo:NAME, module.path:factory or .pt2)")
    if path.suffix != ".pt2":
        raise InputError(f"{str(path)!r}: unknown model file type; expected a .pt2 file")
    from edgeopt.runtimes.torch_runner import _load_pt2

    from edgeopt.compress.pt2 import as_module

    module, example = _load_pt2(path)
    module = as_module(module)  # the program refuses .eval()/.train(), which steps call
    shape = tuple(example[0].shape) if example else None
    return LoadedModel(module, shape, str(path))


def _load_factory(spec: str) -> LoadedModel:
    import torch

    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(f"model {spec!r}: expected module.path:factory")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"model {spec!r}: cannot import module {mod_name!r} ({e})") from None
    factory = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise InputError(f"model {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise InputError(f"model {spec!r}: {attr!r} is not callable; expected a function or class "
                         "returning a torch.nn.Module")
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"model {spec!r}: {attr}() returned {type(module).__name__}, "
                         "expected a torch.nn.Module")
    shape = getattr(module, "input_shape", None)
    return LoadedModel(module.eval(), tuple(shape) if shape else None, spec)


def example_input(shape: tuple, seed: int = 0):
    """A seeded standard-normal float32 input of ``shape``."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def model_and_example(spec: str, input_shape: tuple | str | None = None, seed: int = 0):
    """``(module, example input)`` for a MODEL argument; ``InputError`` when no shape is known."""
    loaded = load_model(spec, seed=seed, input_shape=input_shape)
    if loaded.input_shape is None:
        raise InputError(f"model {spec!r} does not say its input shape; pass --input-shape "
                         "(or input_shape in a recipe)")
    return loaded.module, example_input(loaded.input_shape, seed)

