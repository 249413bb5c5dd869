"""The package layout promised by docs/design.md."""

import subprocess
import sys
import tomllib

from helpers import REPO


def test_package_list_matches_init_files():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(conf["packages"])
    mapping = conf["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([pkg, *rel.parts]))
    assert declared == found
    assert set(mapping) <= declared


def test_no_root_edgeopt_folder_shadows_the_namespace():
    assert not (REPO / "edgeopt").exists()


def test_runtimes_import_does_not_pull_torch_or_tvm():
    code = ("import sys, edgeopt.runtimes, edgeopt.runtimes.artifact, edgeopt.runtimes.base, "
            "edgeopt.runtimes.native, edgeopt.runtimes.rpc; "
            "heavy = [m for m in ('torch', 'tvm', 'onnxruntime', 'edgeopt.compile', 'edgeopt.pipeline') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# What ships to devices runs models; building the native runner (CMake, pip downloads of the
# aarch64 TVM wheels) lives in edgeopt.compile.native_build, the local RPC farm in
# edgeopt.pipeline.farm.
BUILD_AND_FARM_WORDS = ("cmake", "pip download", '"pip"', "start_local_farm", "localfarm",
                        "tvm.exec.rpc_tracker", "tvm.exec.rpc_server")


def test_runtimes_hold_no_build_tools_pip_or_farm():
    modules = sorted((REPO / "runtimes").rglob("*.py"))
    assert len(modules) > 5
    for path in modules:
        text = path.read_text().lower()
        found = [w for w in BUILD_AND_FARM_WORDS if w in text]
        assert not found, f"{path.relative_to(REPO)} mentions {found}"


def test_console_script_help_lists_commands():
    from helpers import edgeopt_cli

    from edgeopt.pipeline.cli import COMMANDS

    r = edgeopt_cli("--help")
    assert r.returncode == 0
    names = [c.__name__.rsplit(".", 1)[1] for c in COMMANDS]
    assert set(names) == {"demo", "export", "compress", "compile", "bench", "run", "search", "check", "shadow"}
    for cmd in names:
        assert cmd in r.stdout
        sub = edgeopt_cli(cmd, "--help")
        assert sub.returncode == 0 and "exit codes" in sub.stdout, cmd
    for step in ("lowrank", "prune", "quantize"):
        sub = edgeopt_cli("compress", step, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout, step


def test_each_cli_command_is_a_module_beside_its_parser():
    from edgeopt.pipeline.cli import COMMANDS

    for command in COMMANDS:
        assert callable(command.add_parser) and callable(command.run), command.__name__
