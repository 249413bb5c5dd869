"""The native runner edgeopt-run: CMake build, parity with the Python TVM VM, bad input, bundles."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.bundle import make_bundle
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from edgeopt.compile import native_build
from edgeopt.compile.native_build import runner_binary
from helpers import edgeopt_cli, example_inputs, listing, tiny_conv_net

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake missing (make setup installs it)")]


@pytest.fixture(scope="module")
def cpu_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=d / "m.onnx").path
    return build(onnx_path, BuildConfig(target="cpu"), out=d / "cpu").output


def run_binary(binary, *args, env=None):
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def test_cmake_builds_the_runner_from_the_repository_root(tmp_path, cpu_artifact):
    for cmd in (["cmake", "-S", REPO, "-B", tmp_path / "build"], ["cmake", "--build", tmp_path / "build"]):
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    binary = tmp_path / "build" / "runtimes" / "native" / "edgeopt-run"
    assert run_binary(binary, "--help").returncode == 0
    r = run_binary(binary, cpu_artifact.path, "--warmup", "1", "--repeat", "3")
    assert r.returncode == 0, r.stderr
    timing = json.loads(r.stdout)
    assert timing["n"] == 3 and 0 < timing["min_ms"] <= timing["median_ms"] <= timing["p90_ms"]


def test_native_outputs_equal_the_python_vm(cpu_artifact):
    native = load(cpu_artifact, runtime="native", threads=1, provide_binary=runner_binary)
    vm = load(cpu_artifact, runtime="tvm", threads=1)
    for seed in range(3):
        x = example_inputs(seed=seed)
        a, b = native.run(x), vm.run(x)
        assert len(a) == len(b) == 1 and a[0].shape == b[0].shape == (1, 3)
        assert np.max(np.abs(a[0] - b[0])) <= 1e-5 * np.max(np.abs(b[0]))
    result = native.benchmark(example_inputs(), warmup=2, repeat=7)
    assert result.runtime == "native" and result.latency.n == 7 and "emulated" not in result.machine


def test_the_runner_binary_is_injected(cpu_artifact, tmp_path):
    asked = []

    def provide(arch, log):
        asked.append(arch)
        return runner_binary(arch, progress=log)

    x = example_inputs()
    expected = load(cpu_artifact, runtime="native", threads=1, binary=runner_binary("host")).run(x)[0]
    np.testing.assert_array_equal(load(cpu_artifact, runtime="native", provide_binary=provide).run(x)[0], expected)
    assert asked == ["host"]
    # the runtime imports nothing of the compile side: without a binary or a provider it says so
    with pytest.raises(InputError, match="needs a built edgeopt-run"):
        load(cpu_artifact, runtime="native")

    def never(arch, log):
        raise AssertionError("a given binary is used as it is")

    copy = tmp_path / "edgeopt-run"
    shutil.copy2(runner_binary("host"), copy)
    runner = load(cpu_artifact, runtime="native", binary=copy, provide_binary=never)
    assert runner.binary == copy
    np.testing.assert_array_equal(runner.run(x)[0], expected)
    with pytest.raises(InputError, match="is not an executable file"):
        load(cpu_artifact, runtime="native", binary=tmp_path / "missing")


def test_build_cli_prints_the_cached_runner():
    r = subprocess.run([sys.executable, "-m", "edgeopt.compile.native_build", "build", "host"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(runner_binary("host"))
    r = subprocess.run([sys.executable, "-m", "edgeopt.compile.native_build", "build", "riscv"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_build_key_follows_the_sources(tmp_path):
    sources = tmp_path / "src"
    shutil.copytree(native_build.source_dir(), sources)
    root = native_build.host_tvm_root()
    key = native_build.build_key("host", root, sources)
    assert key.startswith("host-") and key == native_build.build_key("host", root, sources)
    assert native_build.build_key("aarch64", root, sources) != key
    (sources / "edgeopt_run.cc").write_text((sources / "edgeopt_run.cc").read_text() + "\n// changed\n")
    assert native_build.build_key("host", root, sources) != key
    # what else a build links (the oneDNN plugin: its prefix and oneDNN's version) is part of the key
    changed = native_build.build_key("host", root, sources)
    assert native_build.build_key("host", root, sources, extra="/venv|onednn-2023.2.0") != changed


def test_onednn_available_names_the_missing_packages_and_the_requirements_file(tmp_path, monkeypatch):
    import platform

    if platform.machine() != "x86_64" or shutil.which("cmake") is None:
        pytest.skip("the oneDNN plugin builds on x86-64 with cmake")
    monkeypatch.setattr(native_build, "onednn_prefix", lambda: tmp_path)  # an empty prefix
    missing = native_build.onednn_available()
    for package in ("onednn-cpu-tbb", "onednn-devel-cpu-tbb", "tbb-devel", "intel-cmplr-lib-rt"):
        assert package in missing
    assert "pip install -r requirements/onednn.txt" in missing and str(tmp_path) in missing
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libimf.so").write_bytes(b"")
    (tmp_path / "lib" / "libintlc.so.5").write_bytes(b"")
    assert "intel-cmplr-lib-rt" not in native_build.onednn_available()


def test_missing_aarch64_runtime_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native_build.aarch64_tvm_root().is_relative_to(tmp_path / "edgeopt")
    with pytest.raises(InputError, match="edgeopt.compile.native_build fetch-aarch64"):
        native_build.runner_tvm_root("aarch64")
    with pytest.raises(InputError, match="must be one of host, aarch64"):
        runner_binary("mips")


def test_cli_bench_with_the_native_runtime(cpu_artifact, tmp_path):
    r = edgeopt_cli("bench", cpu_artifact.path, "--runtime", "native", "--repeat", "5", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b.json").read_text())["latency_ms"]["n"] == 5


def test_truncated_library_is_refused(cpu_artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cpu_artifact.path, broken)
    lib = broken / "model.so"
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    r = run_binary(runner_binary("host"), broken)
    assert r.returncode == 2 and "is truncated" in r.stderr, r.stderr
    lib.write_bytes(b"not a library")
    r = run_binary(runner_binary("host"), broken)
    assert r.returncode == 2 and "not an ELF shared library" in r.stderr


def test_inputs_that_disagree_with_the_manifest_are_refused(cpu_artifact, tmp_path):
    binary = runner_binary("host")
    np.save(tmp_path / "wrong.npy", np.zeros((1, 1, 9, 9), np.float32))
    r = run_binary(binary, cpu_artifact.path, "--input", f"input={tmp_path / 'wrong.npy'}")
    assert r.returncode == 2 and "(1, 1, 9, 9)" in r.stderr and "(1, 1, 8, 8)" in r.stderr, r.stderr
    np.save(tmp_path / "wrong_dtype.npy", np.zeros((1, 1, 8, 8), np.float64))
    r = run_binary(binary, cpu_artifact.path, "--input", f"input={tmp_path / 'wrong_dtype.npy'}")
    assert r.returncode == 2 and "float64" in r.stderr and "float32" in r.stderr
    r = run_binary(binary, cpu_artifact.path, "--input", "nosuch=a.npy")
    assert r.returncode == 2 and "does not take" in r.stderr
    r = run_binary(binary, tmp_path / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_binary(binary, cpu_artifact.path, "--repeat", "0")
    assert r.returncode == 2 and "--repeat expects an integer >= 1" in r.stderr
    # a missing --outputs folder is created, not an error
    r = run_binary(binary, cpu_artifact.path, "--repeat", "1", "--outputs", tmp_path / "new" / "outs")
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "new" / "outs").glob("0_*.npy"))


def test_emulation_is_only_for_foreign_artifacts(cpu_artifact):
    with pytest.raises(InputError, match="runs natively"):
        load(cpu_artifact, runtime="native", emulate="qemu")


def test_bundle_runs_from_its_own_folder(cpu_artifact, tmp_path):
    bundle = make_bundle(cpu_artifact, tmp_path / "bundle")
    assert {"edgeopt-run", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "model/manifest.json",
            "model/model.so", "README.txt"} <= set(listing(bundle))
    # Moved elsewhere with no environment: the runner finds its libraries through $ORIGIN/lib.
    moved = tmp_path / "elsewhere"
    shutil.move(str(bundle), moved)
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run(["./edgeopt-run", "model", "--repeat", "2"], cwd=moved, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 2
    # The bundle's runner, given to NativeRunner: nothing is built.
    runner = load(cpu_artifact, runtime="native", binary=moved / "edgeopt-run",
                  provide_binary=lambda arch, log: pytest.fail("nothing to build"))
    assert runner.run(example_inputs())[0].shape == (1, 3)
    with pytest.raises(InputError, match="already exists"):
        make_bundle(cpu_artifact, moved)


def test_compile_cli_writes_a_bundle(tmp_path):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    r = edgeopt_cli("compile", onnx_path, "--target", "cpu", "--out", tmp_path / "a", "--bundle", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert "./edgeopt-run model" in r.stdout and (tmp_path / "b" / "edgeopt-run").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary folders left"
