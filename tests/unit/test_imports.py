"""The layers docs/design.md promises, read from the source: every import of every module
(module-level and inside functions, since a function-level import is still a dependency).

(a) direction: pipeline -> compress -> compile -> runtimes -> core, never upwards (core imports
nothing of edgeopt; runtimes only core; compile nothing of compress or pipeline; compress
nothing of pipeline); (b) no import cycle between modules; (c) no private name (leading
underscore, not a dunder) taken from another module, by ``from m import _x`` or ``m._x``.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

from helpers import REPO

#: Lower layers first: a module may import its own layer and those before it.
LAYERS = ("core", "runtimes", "compile", "compress", "pipeline")

def package_folders(repo: Path) -> dict[str, Path]:
    """``{"edgeopt.core": repo / "core", ...}`` from pyproject.toml's package-dir mapping."""
    conf = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: repo / folder for pkg, folder in conf["package-dir"].items()}


def modules(folders: dict[str, Path]) -> dict[str, Path]:
    """Every module's dotted name and file (a package is its ``__init__.py``)."""
    found = {}
    for pkg, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([pkg, *parts])] = path
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports(mods: dict[str, Path]):
    """``(edges, private)``: ``edges[m]`` the edgeopt modules ``m`` imports; ``private`` the
    ``(importer, module, name)`` of every private name taken from another module."""
    edges: dict[str, set] = defaultdict(set)
    private = set()
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        aliases = {}  # local name -> edgeopt module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:
                    full = f"{source}.{a.name}"
                    target = full if full in mods else source
                    if target in mods and target != m:
                        edges[m].add(target)
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    if source in mods and source != m and _private(a.name):
                        private.add((m, source, a.name))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.name != m:
                        edges[m].add(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and _private(node.attr):
                private.add((m, aliases[node.value.id], node.attr))
    return edges, private


def cycles(edges: dict[str, set]) -> list[frozenset]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set]) -> list[str]:
    """Every import of a module from a later layer than the importer's."""
    def layer(m: str) -> int:
        return LAYERS.index(m.split(".")[1])

    return sorted(f"{m} -> {d}" for m, ds in edges.items() for d in ds if layer(d) > layer(m))


def _graph():
    return imports(modules(package_folders(REPO)))


def test_layers_import_only_downwards():
    edges, _ = _graph()
    assert {m.split(".")[1] for m in edges} == set(LAYERS)
    assert upward(edges) == []


def test_no_import_cycle_between_modules():
    edges, _ = _graph()
    assert not cycles(edges), "\n".join(" <-> ".join(sorted(c)) for c in cycles(edges))


def test_no_private_name_is_imported_from_another_module():
    _, private = _graph()
    assert not private, sorted(private)


def test_the_checks_catch_what_they_forbid(tmp_path):
    """A cycle, a private import (both spellings) and an upward import in a small tree are found."""
    for layer in ("core", "runtimes", "compile", "compress", "pipeline"):
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "compress" / "a.py").write_text("def f():\n    from .b import _helper\n")
    (tmp_path / "compress" / "b.py").write_text("from . import a\n\n\ndef _helper():\n    return a\n")
    (tmp_path / "compress" / "c.py").write_text("from . import b as bee\n\nx = bee._helper\n")
    (tmp_path / "runtimes" / "r.py").write_text("import edgeopt.compile.k\n")
    (tmp_path / "compile" / "k.py").write_text("")
    folders = {f"edgeopt.{layer}": tmp_path / layer for layer in LAYERS}
    edges, private = imports(modules(folders))
    assert cycles(edges) == [frozenset({"edgeopt.compress.a", "edgeopt.compress.b"})]
    assert private == {("edgeopt.compress.a", "edgeopt.compress.b", "_helper"),
                       ("edgeopt.compress.c", "edgeopt.compress.b", "_helper")}
    assert upward(edges) == ["edgeopt.runtimes.r -> edgeopt.compile.k"]
