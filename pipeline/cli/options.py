"""Command-line options generated from a step's config: one option per field, the same names a
recipe uses.

A field ``energy_on`` is the option ``--energy-on`` with the help text of the config's
docstring (its ``Args:`` section); a bool field is ``--field`` / ``--no-field``; a tuple field
takes ``A,B,...``; a nested config's fields are spelled flat (``BuildConfig.tune.trials`` is
``--tune-trials``, ``edgeopt.core.config.flat_fields``). An option not given leaves the config's
own default, and every value goes through the config's checks (``make_config``), so the CLI,
recipes and the Python API cannot drift apart.

Example:
    >>> import argparse
    >>> from edgeopt.pipeline.cli.options import add_config_options, config_from_args
    >>> parser = argparse.ArgumentParser()
    >>> add_config_options(parser, "prune")[:2]
    ['amount', 'structured']
    >>> config_from_args("prune", parser.parse_args(["--amount", "0.5", "--no-structured"])).structured
    False
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from edgeopt.core.config import field_kinds, flat_fields, nested_config


def field_help(cls) -> dict[str, str]:
    """``{field: help}`` from the ``Args:`` section of a config's docstring."""
    doc = cls.__doc__ or ""
    text = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    helps: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\s{8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            current = names
            for n in names:
                helps[n] = m.group(2).strip()
        elif current and line.strip():
            for n in current:
                helps[n] += " " + line.strip()
        elif not line.strip():
            current = None
    return {k: v.replace("%", "%%") for k, v in helps.items()}


def value_type(kinds: list[str]):
    """An argparse type for a field of these kinds (tuples are comma-separated)."""
    def number_or_text(text: str):
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text

    if "tuple" in kinds:
        return lambda text: tuple(number_or_text(p.strip()) for p in text.split(",") if p.strip())
    if kinds == ["float"]:
        return float
    if kinds == ["int"]:
        return int
    return str


def _options(cls, prefix: str = ""):
    """``(flat name, field, help)`` for every field of ``cls``, a nested config's fields flat."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        inner = nested_config(f)
        if inner is None:
            yield prefix + f.name, f, helps.get(f.name, "")
        else:
            yield from _options(inner, f"{prefix}{f.name}_")


def add_config_options(parser, step: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """One option per field of step ``step``'s config (but ``exclude``); returns their names."""
    from edgeopt.pipeline.steps import STEPS

    added = []
    for name, f, text in _options(STEPS[step].config):
        if name in exclude:
            continue
        kinds, _ = field_kinds(f.type)
        flag = "--" + name.replace("_", "-")
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text += f" (default: {default})"
        if kinds == ["bool"]:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        else:
            metavar = "A,B,..." if "tuple" in kinds else None
            parser.add_argument(flag, dest=name, type=value_type(kinds), default=argparse.SUPPRESS,
                                metavar=metavar, help=text)
        added.append(name)
    return added


def config_from_args(step: str, args: argparse.Namespace, **given):
    """Step ``step``'s config from the options of ``add_config_options`` that were given (and
    ``given``, options the command spells its own way); ``InputError`` naming a bad one."""
    from edgeopt.pipeline.steps import STEPS, make_config

    names = {name for name, _ in flat_fields(STEPS[step].config)}
    return make_config(step, {**{k: v for k, v in vars(args).items() if k in names}, **given})
