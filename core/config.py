"""Field types of step configs, checked before any range check.

Every step config is a frozen dataclass whose ``__post_init__`` starts with
``check_field_types(self)``: each field's value must match its annotation (``float`` accepts an
int, no number accepts a bool, ``tuple`` accepts a list or a lone string and stores a tuple), so a
value of the wrong type is an ``InputError`` naming the field, never a ``TypeError`` from a
comparison deep inside.

Example:
    >>> from dataclasses import dataclass
    >>> from edgeopt.core.config import check_field_types
    >>> @dataclass(frozen=True)
    ... class C:
    ...     alpha: float = 0.5
    ...     def __post_init__(self):
    ...         check_field_types(self)
    >>> C(alpha="0.5")
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: alpha must be a number, got '0.5'
"""

from __future__ import annotations

import dataclasses

from .errors import InputError

_NAMES = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
          "tuple": "a list", "dict": "a mapping"}


def _accepts(kind: str, value) -> bool:
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "tuple":
        return isinstance(value, (tuple, list))
    if kind == "dict":
        return isinstance(value, dict)
    return True  # other annotations (objects, callables) are checked by the config itself


def field_kinds(annotation) -> tuple[list[str], bool]:
    """``"float | None"`` -> ``(["float"], True)``: the plain kinds and whether None is allowed."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    kinds = [p.split("[")[0] for p in parts if p != "None"]
    return kinds, optional


def check_field_types(config) -> None:
    """Raise ``InputError`` for the first field whose value does not match its annotation."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds, optional = field_kinds(f.type)
        if value is None and optional:
            continue
        if "tuple" in kinds and isinstance(value, str):
            # skip="conv1" means the one layer conv1, never the characters of its name
            object.__setattr__(config, f.name, (value,))
            continue
        if any(_accepts(k, value) for k in kinds) or not kinds:
            if "tuple" in kinds and isinstance(value, list):
                object.__setattr__(config, f.name, tuple(value))
            if kinds == ["float"] and isinstance(value, int):
                object.__setattr__(config, f.name, float(value))
            continue
        names = " or ".join(_NAMES.get(k, k) for k in kinds) + (" or null" if optional else "")
        raise InputError(f"{f.name} must be {names}, got {value!r}")
