"""The config contract: field types checked first, then the config's own validation.

Every step config is a frozen dataclass that derives from ``StepConfig``: its ``__post_init__``
runs ``check_field_types(self)`` (each field's value must match its annotation: ``float`` accepts
an int, no number accepts a bool, ``tuple`` accepts a list or a lone string and stores a tuple),
then ``self.validate()`` (ranges, choices, fields that go together). A value of the wrong type is
an ``InputError`` naming the field and the type expected, never a ``TypeError`` from a comparison
deep inside.

A field whose value is itself a config (``BuildConfig.tune``, a ``TuneConfig``) says so in its
metadata, ``field(default=None, metadata={"nested": TuneConfig})``:
recipes and CLI flags spell its fields flat, as ``<field>_<nested field>`` (``tune_trials``,
``--tune-trials``); ``flat_fields`` lists them and ``config_from_flat`` builds the config.

Example:
    >>> from dataclasses import dataclass
    >>> from edgeopt.core.config import StepConfig
    >>> @dataclass(frozen=True)
    ... class C(StepConfig):
    ...     alpha: float = 0.5
    ...     def validate(self):
    ...         if not 0 <= self.alpha <= 1:
    ...             raise ValueError("alpha must be in [0, 1]")
    >>> C(alpha="0.5")
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: alpha must be a number, got '0.5'
    >>> C(alpha=1).alpha
    1.0
"""

from __future__ import annotations

import dataclasses
import importlib

from .errors import InputError

_NAMES = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
          "tuple": "a list", "dict": "a mapping"}
_PLURALS = {"float": "numbers", "int": "integers", "bool": "true or false values", "str": "strings"}


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


def element_kind(annotation) -> str | None:
    """``"tuple[str, ...]"`` -> ``"str"``: the kind every item of a tuple field must have."""
    text = annotation if isinstance(annotation, str) else str(annotation)
    if "tuple[" not in text:
        return None
    return text.split("tuple[", 1)[1].split(",")[0].split("]")[0].strip()


def check_field_types(config) -> None:
    """Raise ``InputError`` for the first field whose value does not match its annotation."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kinds, optional = field_kinds(f.type)
        if value is None and optional:
            continue
        if "tuple" in kinds and isinstance(value, str):
            # skip="conv1" means the one layer conv1, never the characters of its name
            value = (value,)
            object.__setattr__(config, f.name, value)
        if any(_accepts(k, value) for k in kinds) or not kinds:
            if "tuple" in kinds and isinstance(value, (tuple, list)):
                item = element_kind(f.type)
                if item and not all(_accepts(item, v) for v in value):
                    raise InputError(f"{f.name} must be a list of {_PLURALS.get(item, item)}, got {value!r}")
                if item == "float":
                    value = tuple(float(v) for v in value)
                object.__setattr__(config, f.name, tuple(value))
            if kinds == ["float"] and isinstance(value, int):
                object.__setattr__(config, f.name, float(value))
            continue
        names = " or ".join(_NAMES.get(k, k) for k in kinds) + (" or null" if optional else "")
        raise InputError(f"{f.name} must be {names}, got {value!r}")


class StepConfig:
    """Base of every step config (a frozen dataclass): types first, then ``validate()``.

    A subclass does not define ``__post_init__``; it overrides ``validate`` for its range and
    cross-field checks, which can rely on every field having its annotated type.
    """

    def __post_init__(self):
        check_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Range, choice and cross-field checks; ``InputError`` naming the field."""


def nested_config(f: dataclasses.Field):
    """The config class a field holds (its ``nested`` metadata: the class, or its
    ``module:attribute`` path where importing the class at once would make a cycle), or ``None``
    for a plain field."""
    nested = f.metadata.get("nested")
    if not isinstance(nested, str):
        return nested
    module, _, attr = nested.partition(":")
    return getattr(importlib.import_module(module), attr)


def flat_fields(cls) -> list[tuple[str, dataclasses.Field]]:
    """``[(flat name, field)]``: a nested config's fields as ``<field>_<nested field>``.

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass(frozen=True)
        ... class Inner(StepConfig):
        ...     trials: int = 0
        >>> @dataclass(frozen=True)
        ... class Outer(StepConfig):
        ...     target: str = "cpu"
        ...     tune: object = field(default=None, metadata={"nested": Inner})
        >>> [name for name, _ in flat_fields(Outer)]
        ['target', 'tune_trials']
    """
    out = []
    for f in dataclasses.fields(cls):
        inner = nested_config(f)
        if inner is None:
            out.append((f.name, f))
        else:
            out += [(f"{f.name}_{g.name}", g) for g in dataclasses.fields(inner)]
    return out


def config_from_flat(cls, params: dict):
    """Build ``cls`` from flat names (``flat_fields``); a nested config is made when any of its
    fields is given, and is ``None`` otherwise. Unknown names are the caller's to refuse."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        inner = nested_config(f)
        if inner is None:
            if f.name in params:
                kwargs[f.name] = params[f.name]
            continue
        prefix = f.name + "_"
        sub = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        if f.name in params:
            kwargs[f.name] = params[f.name]
        elif sub:
            try:
                kwargs[f.name] = inner(**sub)
            except InputError as e:
                # "trials must be ..." said as the caller spelled it: "tune_trials must be ..."
                first = str(e).split(" ", 1)[0]
                names = {g.name for g in dataclasses.fields(inner)}
                raise InputError(f"{prefix}{e}" if first in names else f"{f.name}: {e}") from None
    return cls(**kwargs)


def flat_params(config) -> dict:
    """The fields of ``config`` that differ from their defaults, by flat name (what a recipe says)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if nested_config(f) is not None and value is not None:
            # a nested config left at its defaults still says it is there, by its first field
            inner = flat_params(value) or {(g := dataclasses.fields(value)[0]).name: getattr(value, g.name)}
            out.update({f"{f.name}_{k}": v for k, v in inner.items()})
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if default is dataclasses.MISSING or value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_argument(step: str, config, cls: type, call: str, default: bool = True):
    """The config a step function was given as its second argument: ``cls()`` for ``None`` (when
    the step has defaults), ``config`` itself when it is a ``cls``; anything else (data, a target
    string, a model) is an ``InputError`` that names the call to write.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class C:
    ...     pass
    >>> config_argument("step", None, C, "step(model, C(), out=...)")
    C()
    >>> config_argument("step", "cuda", C, "step(model, C(), out=...)")
    Traceback (most recent call last):
    ...
    edgeopt.core.errors.InputError: step needs a C (or None) as its second argument, got str: call step(model, C(), out=...)
    """
    if config is None and default:
        return cls()
    if not isinstance(config, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise InputError(f"{step} needs {article} {cls.__name__}{' (or None)' if default else ''} as its second "
                         f"argument, got {type(config).__name__}: call {call}")
    return config
