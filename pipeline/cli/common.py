"""What the ``edgeopt`` commands share: argument types, data loading, the exit-code contract.

Example:
    >>> from edgeopt.pipeline.cli.common import int_at_least
    >>> int_at_least(1)("3")
    3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeopt.core.errors import InputError

EPILOG = ("exit codes: 0 success, 1 a check failed, 2 bad input or usage, "
          "3 (run) the study finished but some variants failed")


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return v

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def say(line: str) -> None:
    """Progress and notes go to stderr; results go to stdout."""
    print(line, file=sys.stderr, flush=True)


def load_samples(spec: str | None, split: str, inputs_by_name: bool = False):
    """``task:NAME`` -> that task's split; ``FILE.npy`` -> the array (never unpickled);
    with ``inputs_by_name``, ``FILE.npz`` -> ``{input name: array}`` (a model with several inputs)."""
    import numpy as np

    if spec is None:
        return None
    if spec.startswith("task:"):
        from edgeopt.pipeline.tasks import load_task

        return getattr(load_task(spec[5:]), split)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data file {spec!r} does not exist")
    if inputs_by_name and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except ValueError as e:
            raise InputError(f"data file {spec!r} holds something other than plain arrays: {e}") from None
    if path.suffix != ".npy":
        raise InputError(f"data {spec!r}: expected task:NAME or a .npy file"
                         + (" (or a .npz with one array per model input)" if inputs_by_name else ""))
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"data file {spec!r} is not a plain numpy array: {e}") from None


def torch_model(spec: str, input_shape: str | None, seed: int = 0, weights: str | None = None):
    """``(module, example input)`` for a MODEL argument (``edgeopt.pipeline.models``)."""
    from edgeopt.pipeline.models import model_and_example

    return model_and_example(spec, input_shape, seed, weights=weights)


INPUT_SHAPE_HELP = ("concrete input shape for an ONNX model with dynamic (-1 or symbolic) dimensions: "
                    "1,3,48,320, or NAME=1,3,48,320 once per input for several inputs")

WEIGHTS_HELP = ("a state dict for MODEL (.pth/.pt saved with torch.save(model.state_dict(), path)), "
                "loaded with weights_only=True")


def refuse_existing_file_parent(out: str) -> None:
    """``--out a/b`` where ``a`` is a file: say so before any work."""
    for parent in Path(out).parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out!r}: {str(parent)!r} is a file, not a folder")
            break
