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


def _lines(error: BaseException) -> list[str]:
    return [ln.strip() for ln in str(error).splitlines() if ln.strip()]


def _cut(line: str, limit: int | None) -> str:
    return line if limit is None or len(line) <= limit else line[:max(limit - 3, 0)] + "..."


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of ``error``'s message, stripped and cut to ``limit`` characters;
    the error's type name when the message is empty.

    For errors that state their reason first (onnx, numpy, YAML, torch, most Python errors).

    Example:
        >>> first_line(ValueError("shape mismatch\\n  while reading node 3"))
        'shape mismatch'
        >>> first_line(KeyError())
        'KeyError'
    """
    lines = _lines(error)
    return _cut(lines[0] if lines else type(error).__name__, limit)


def last_line(error: BaseException, limit: int | None = None) -> str:
    """The last non-empty line of ``error``'s message, stripped and cut to ``limit`` characters;
    the error's type name when the message is empty.

    For errors that end with their reason after a traceback (TVM, MetaSchedule, a subprocess's
    stderr).

    Example:
        >>> last_line(RuntimeError("Traceback:\\n  0: f()\\nInternalError: no kernel"))
        'InternalError: no kernel'
    """
    lines = _lines(error)
    return _cut(lines[-1] if lines else type(error).__name__, limit)
