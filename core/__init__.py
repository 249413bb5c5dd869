"""edgeopt.core: the types and file helpers every other part of edgeopt shares.

Standard library only, so that the device side (``edgeopt.runtimes``) can ship it:
``errors`` (the exceptions the CLI maps to exit codes), ``tensors`` (``TensorSpec``),
``files`` (atomic writes, the cache root), ``result`` (``StepResult``, the one return type of
every step, and the progress argument every step takes).

Example:
    >>> from edgeopt.core import InputError, TensorSpec
    >>> TensorSpec("x", [1, 3], "float32").to_dict()["shape"]
    [1, 3]
"""

from .errors import CheckFailed, InputError, ParityError
from .tensors import TensorSpec

__all__ = ["CheckFailed", "InputError", "ParityError", "TensorSpec"]
