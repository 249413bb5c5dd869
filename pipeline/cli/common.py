"""What the ``edgeopt`` commands share: argument types, data loading, the exit-code contract.

Example:
    >>> from edgeopt.pipeline.cli.common import int_at_least
    >>> int_at_least(1)("3")
    3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from edgeopt.core.errors import InputError

EPILOG = ("exit codes: 0 success, 1 a check failed, 2 bad input or usage, "
          "3 (run) the study finished but some variants failed")


def add_command(sub, doc: str, run, epilog: str = EPILOG) -> argparse.ArgumentParser:
    r"""A command's parser from its module's docstring, ``"``edgeopt NAME``: HELP.\n\nDESCRIPTION"``:
    the name, the line ``edgeopt --help`` shows and the text of ``edgeopt NAME --help``; every
    command has the exit codes as its epilog and runs ``run(args)``.

    Example:
        >>> sub = argparse.ArgumentParser(prog="edgeopt").add_subparsers()
        >>> p = add_command(sub, "``edgeopt hello``: greet.\n\nPrint one ``line``.", print)
        >>> p.prog, p.description
        ('edgeopt hello', 'Print one line.')
    """
    head, _, body = doc.strip().partition("\n\n")
    name, _, summary = head.partition(": ")

    def plain(text: str) -> str:
        return " ".join(text.replace("``", "").split())

    parser = sub.add_parser(plain(name).split()[-1], epilog=epilog, help=plain(summary).rstrip("."),
                            description=plain(body) or None)
    parser.set_defaults(func=run)
    return parser


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


def accept_debug_after(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--debug is accepted after the command too (edgeopt run RECIPE --debug); a command with
    steps (compress) gives each step's parser the flag, as the innermost parser reads it."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def say(line: str) -> None:
    """Progress and notes go to stderr; results go to stdout."""
    print(line, file=sys.stderr, flush=True)


def load_samples(spec: str | None, split: str, inputs_by_name: bool = False):
    """``task:NAME`` -> that task's split; ``FILE.npy`` -> the array (never unpickled);
    with ``inputs_by_name``, ``FILE.npz`` -> ``{input name: array}`` (a model with several inputs)."""
    import numpy as np

    from edgeopt.compress.calibration import refuse_non_finite

    if spec is None:
        return None
    if spec.startswith("task:"):
        from edgeopt.pipeline.tasks import load_task

        return getattr(load_task(spec[5:]), split)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data file {spec!r} does not exist")
    if path.suffix == ".npz" and not npz_names(path):
        raise InputError(f"data file {spec!r} holds no arrays; expected x (and y) of a task, or one "
                         "array per model input")
    if path.suffix == ".npz" and is_task_npz(path):
        from edgeopt.pipeline.tasks import load_task

        # a task's data file (x, and y / metric): the same as task:FILE.npz
        return getattr(load_task(spec), split)
    if inputs_by_name and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except ValueError as e:
            raise InputError(f"data file {spec!r} holds something other than plain arrays: {e}") from None
        for name, a in arrays.items():
            refuse_non_finite(a, f"data file {spec!r}, array {name!r}")
        return arrays
    if path.suffix != ".npy":
        raise InputError(f"data {spec!r}: expected task:NAME or a .npy file"
                         + (" (or a .npz with one array per model input)" if inputs_by_name else ""))
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"data file {spec!r} is not a plain numpy array: {e}") from None
    refuse_non_finite(data, f"data file {spec!r}")  # calibration or eval data: both meaningless
    return data


def npz_names(path: Path) -> set[str]:
    """The array names of a ``.npz`` file (``InputError`` when it is not one)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return set(getattr(npz, "files", ()))
    except (OSError, ValueError) as e:
        raise InputError(f"data file {str(path)!r} is not a readable .npz file: {e}") from None


def is_task_npz(path: Path) -> bool:
    """A ``.npz`` in the task format (``x``, optionally ``y`` and ``metric``;
    ``edgeopt.pipeline.task_sources``) rather than one array per model input."""
    names = npz_names(path)
    return "x" in names and names <= {"x", "y", "metric"}


def torch_model(spec: str, input_shape: str | None, seed: int = 0, weights: str | None = None):
    """``(module, example input)`` for a MODEL argument (``edgeopt.pipeline.models``)."""
    from edgeopt.pipeline.models import model_and_example

    return model_and_example(spec, input_shape, seed, weights=weights)


INPUT_SHAPE_HELP = ("concrete input shape for an ONNX model with dynamic (-1 or symbolic) dimensions: "
                    "1,3,48,320, or NAME=1,3,48,320 once per input for several inputs")

WEIGHTS_HELP = ("a state dict for MODEL (.pth/.pt saved with torch.save(model.state_dict(), path)), "
                "loaded with weights_only=True")


def refuse_existing_file_parent(out: str, option: str = "--out") -> None:
    """``--out a/b`` where ``a`` is a file, or in a folder nothing can be written to: say so
    before any work (a read-only folder would otherwise fail after all of it)."""
    path = Path(out).absolute()
    folder = path if path.is_dir() else None
    for parent in path.parents:
        if folder is None and parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {out!r}: {str(parent)!r} is a file, not a folder")
            folder = parent
    # a file created and removed, not os.access: that answers yes for root on a read-only mount
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeopt-write-check-", dir=folder)
    except OSError as e:
        raise InputError(f"{option} {out!r}: cannot write in {str(folder)!r} ({e.strerror or e}); "
                         "expected a folder this user can write to") from None
    os.close(fd)
    os.unlink(probe)


class ZooNames:
    """The zoo registry's model names for a help text (``%(zoo)s``): read when help is printed,
    so building the parser does not import torch."""

    def __str__(self) -> str:
        from edgeopt.pipeline.zoo import ZOO

        return ", ".join(ZOO)


def list_zoo_in_help(action: argparse.Action) -> argparse.Action:
    """Let ``action``'s help say ``%(zoo)s`` for the zoo's model names."""
    action.zoo = ZooNames()
    return action
