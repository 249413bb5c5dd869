"""Error types shared by every edgeopt layer.

The CLI maps them to exit codes (docs/design.md): ``InputError`` -> 2 (bad input or usage),
``CheckFailed`` -> 1 (a check ran and failed: parity above tolerance, a regression).

Example:
    >>> from edgeopt.core.errors import InputError
    >>> isinstance(InputError("bad"), ValueError)
    True
"""


class InputError(ValueError):
    """Bad user input: the message names what was wrong and what was expected."""


class CheckFailed(Exception):
    """A check ran to completion and its verdict is 'fail' (exit code 1 on the CLI)."""


class ParityError(CheckFailed):
    """Two backends disagree on the same inputs by more than the tolerance."""
