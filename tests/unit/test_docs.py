"""The documentation stays true to the repository: layout table, self-containment, recipe keys."""

import dataclasses
import re
import subprocess

import pytest

from helpers import REPO


def _tracked() -> list[str]:
    r = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("not a git checkout")
    return r.stdout.split()


def _layout_rows() -> dict[str, str]:
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\| `([^`]+)/` \|[^|]*\|(.*)\|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_layout_table_lists_every_folder_and_nothing_else():
    folders = {p.split("/")[0] for p in _tracked() if "/" in p and not p.startswith(".")}
    assert set(_layout_rows()) == folders


@pytest.mark.parametrize("folder", ["core", "compress", "compile", "runtimes", "pipeline"])
def test_layout_table_names_every_module_of_a_package(folder):
    holds = _layout_rows()[folder]
    named = set(re.findall(r"`([a-z0-9_]+\.py)`", holds)) | {f"{d}" for d in re.findall(r"`([a-z_]+)/`", holds)}
    modules = {p.name for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"}
    subpackages = {p.parent.name for p in (REPO / folder).glob("*/__init__.py")}
    assert modules - named == set(), f"docs/design.md does not name {sorted(modules - named)}"
    assert subpackages - named == set(), f"docs/design.md does not name {sorted(subpackages - named)}"
    missing = {n for n in named if n.endswith(".py") and not (REPO / folder / n).exists()}
    assert not missing, f"docs/design.md names modules that do not exist: {sorted(missing)}"


# built from parts so that this file does not match itself
OUTSIDE = re.compile(r"\.\./" + "shared|" + "TOOLCHAIN" + r"\.md|" + "DESIGN" + r"\.md|this 2-core " + "machine")


def test_no_tracked_file_points_outside_the_repository():
    hits = []
    for rel in _tracked():
        path = REPO / rel
        if path.suffix in (".png", ".gz", ".npz", ".so", ".onnx") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{rel}:{i}" for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, hits


def test_no_module_docstring_speaks_of_this_machine():
    import ast

    bad = []
    for rel in _tracked():
        if rel.endswith(".py") and rel.split("/")[0] in ("core", "compress", "compile", "runtimes", "pipeline"):
            doc = ast.get_docstring(ast.parse((REPO / rel).read_text())) or ""
            if re.search(r"this machine|this CPU|this host's? CPU is", doc):
                bad.append(rel)
    assert not bad, bad


def test_recipe_reference_lists_every_key():
    from edgeopt.pipeline.recipe import BENCH_KEYS, TARGET_KEYS, TOP_KEYS, target_keys
    from edgeopt.pipeline.search_space import QUANTIZE_CHOICES, SEARCH_KEYS
    from edgeopt.pipeline.steps import STEPS
    from edgeopt.pipeline.tasks import TrainConfig

    text = (REPO / "docs" / "recipes.md").read_text()
    keys = set(TOP_KEYS) | set(BENCH_KEYS) | {k for runtime in TARGET_KEYS for k in target_keys(runtime)}
    keys |= set(SEARCH_KEYS) | set(QUANTIZE_CHOICES)
    keys |= {f.name for f in dataclasses.fields(TrainConfig)}
    for name, kind in STEPS.items():
        assert f"`{name}`" in text
        if kind.in_variants:  # compile's keys are a tvm target's (target_keys); export takes none
            keys |= {f.name for f in dataclasses.fields(kind.config)}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/recipes.md does not document {missing}"
