"""Every module's docstring examples run and print what they say (the examples are the first
documentation a reader tries; a renamed argument or a changed figure shows here)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import sys

import pytest

PACKAGES = ("edgeopt.core", "edgeopt.runtimes", "edgeopt.compile", "edgeopt.compress", "edgeopt.pipeline",
            "edgeopt.pipeline.cli")


def modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__)]
    return names


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_run(name):
    importlib.import_module(name)
    # sys.modules: `edgeopt.compile.export` as an attribute is the function the package exports
    result = doctest.testmod(sys.modules[name], optionflags=doctest.ELLIPSIS, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"
