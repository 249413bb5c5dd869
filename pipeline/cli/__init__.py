"""The ``edgeopt`` command line: one module per command, each beside its parser.

Exit codes: 0 success; 1 a check failed (parity above tolerance, a regression); 2 bad input or
usage, with one line on stderr naming the file, field or op and what was expected; 3 ``run``
finished but some variants failed (they are in the report with their reason); 130 interrupted.
No traceback reaches the user unless ``--debug`` is given.

Example:
    $ edgeopt demo --out build/demo
    $ edgeopt export zoo:resnet18 --out build/resnet18.onnx
    $ edgeopt bench build/resnet18.onnx --runtime onnxruntime --threads 2
    $ edgeopt shadow build/int8 --champion build/fp32 --inputs logs/today.npy --max-disagreement 0.01
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from edgeopt.core.errors import CheckFailed, InputError, first_line

from . import bench, check, compile, compress, demo, export, run, search, shadow
from .common import EPILOG, accept_debug_after

#: The commands, in the order ``--help`` lists them.
COMMANDS = (demo, export, compress, compile, bench, run, search, check, shadow)

#: Errors that mean "the input was wrong" (exit 2): the message names the path or value.
INPUT_ERRORS = (InputError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                NotADirectoryError)


class Parser(argparse.ArgumentParser):
    """argparse with the error contract: one line on stderr, exit code 2; and no abbreviated
    options, in this parser and its subcommands' (``--debug`` was read as ``--debug-layers``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="edgeopt", epilog=EPILOG,
        description="Compress, compile and measure a PyTorch or ONNX model for edge targets.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--version", action="version", version=f"edgeopt {version('edgeopt')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        accept_debug_after(command.add_parser(sub))  # (compress: its steps' parsers too)
    return p


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename!s}: {e.strerror}"
    return first_line(e)


def main(argv: list[str] | None = None) -> int:
    import os

    # module.path:factory specs (models, tasks) import from the current folder, as `python -m` does
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        args = build_parser().parse_args(argv)  # (building it imports the commands: seconds)
    except KeyboardInterrupt:
        print("edgeopt: interrupted", file=sys.stderr)
        return 130
    try:
        return args.func(args)
    except INPUT_ERRORS as e:
        if args.debug:
            raise
        print(f"edgeopt {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    except CheckFailed as e:
        if args.debug:
            raise
        print(f"edgeopt {args.command}: check failed: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        extra = {"run": "; finished work is kept in state.json and a re-run resumes",
                 "search": "; finished trials are kept in search.journal and a re-run resumes"}.get(args.command, "")
        print(f"edgeopt {args.command}: interrupted{extra}", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a failure inside a library: one line, the details on --debug
        if args.debug:
            raise
        print(f"edgeopt {args.command}: failed: {type(e).__name__}: {_message(e)} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
