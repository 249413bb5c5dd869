"""The native runner edgeopt-run: CMake build, parity with the Python TVM VM, bad input, bundles."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeopt.compile import build, export
from edgeopt.compile.bundle import make_bundle
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from edgeopt.runtimes.native import runner_binary
from helpers import edgeopt_cli, example_inputs, listing, tiny_conv_net

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake missing (make setup installs it)")


@pytest.fixture(scope="module")
def cpu_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    onnx_path = export(tiny_conv_net(), example_inputs(), d / "m.onnx").path
    return build(onnx_path, "cpu", d / "cpu")


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
    native = load(cpu_artifact, runtime="native", threads=1)
    vm = load(cpu_artifact, runtime="tvm", threads=1)
    for seed in range(3):
        x = example_inputs(seed=seed)
        a, b = native.run(x), vm.run(x)
        assert len(a) == len(b) == 1 and a[0].shape == b[0].shape == (1, 3)
        assert np.max(np.abs(a[0] - b[0])) <= 1e-5 * np.max(np.abs(b[0]))
    result = native.benchmark(example_inputs(), warmup=2, repeat=7)
    assert result.runtime == "native" and result.latency.n == 7 and "emulated" not in result.machine


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
    with pytest.raises(InputError, match="already exists"):
        make_bundle(cpu_artifact, moved)


def test_compile_cli_writes_a_bundle(tmp_path):
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    r = edgeopt_cli("compile", onnx_path, "--target", "cpu", "--out", tmp_path / "a", "--bundle", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert "./edgeopt-run model" in r.stdout and (tmp_path / "b" / "edgeopt-run").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary folders left"
