"""``module.path:factory`` specs: the one resolver behind user models and user tasks.

Example:
    >>> from edgeopt.core.factory import resolve_factory
    >>> make, keywords = resolve_factory("collections:OrderedDict", "model", "a torch.nn.Module")
    >>> make().__class__.__name__, keywords
    ('OrderedDict', ())
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from edgeopt.core.errors import InputError, first_line


def resolve_factory(spec: str, what: str, returns: str,
                    keywords: tuple[str, ...] = ()) -> tuple[Callable, tuple[str, ...]]:
    """The callable that ``spec`` (``module.path:factory``, dots allowed after the colon) names,
    and which of ``keywords`` it accepts; it is not called.

    ``what`` starts every message (``"model"``, ``"task factory"``); ``returns`` says what the
    factory should return. A factory may take ``keywords`` and nothing else without a default.

    Raises:
        InputError: the spec has no ``:``, the module does not import (or raises while it
            imports), the attribute is missing or not callable, or it needs other arguments.
    """
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(f"{what} {spec!r}: expected module.path:factory")
    try:
        factory = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"{what} {spec!r}: cannot import module {mod_name!r} ({e})") from None
    except Exception as e:  # the user's module raised while importing: their error, in one line
        raise InputError(f"{what} {spec!r}: importing {mod_name!r} raised {type(e).__name__}: "
                         f"{first_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise InputError(f"{what} {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise InputError(f"{what} {spec!r}: {attr!r} is not callable; expected a function or class "
                         f"returning {returns}")
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables have no signature: call them bare
        return factory, ()
    needed = [p.name for p in params if p.default is p.empty
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
              and (p.kind == p.POSITIONAL_ONLY or p.name not in keywords)]
    if needed:
        may = (f" (it may take {', '.join(keywords)})" if keywords
               else " (wrap it: def make(): return Net(...))")
        raise InputError(f"{what} {spec!r}: {attr}() needs argument(s) {', '.join(needed)}; "
                         f"a factory must be callable without arguments{may}")
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return factory, tuple(keywords)
    names = {p.name for p in params if p.kind != p.POSITIONAL_ONLY}
    return factory, tuple(k for k in keywords if k in names)
