"""CUDA builds on a machine without GPU or driver: the artifact holds compiled device code."""

import shutil

import pytest

from edgeopt.compile import BuildConfig, build, export
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from helpers import example_inputs, tiny_conv_net

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")

FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")


@pytest.mark.parametrize("target, arch", [("cuda", "sm_90"), ("cuda:sm_80", "sm_80")])
def test_cuda_artifact_has_compiled_kernels_not_source(tmp_path, target, arch):
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    art = build(onnx_path, target, tmp_path / "cuda")
    data = art.model_file.read_bytes()
    assert art.manifest["target"]["kind"] == "cuda" and art.manifest["target"]["arch"] == arch
    assert FATBIN_MAGIC in data, "a CUDA fatbin is embedded"
    assert arch.encode() in data
    assert b"__global__" not in data, "no CUDA source left to compile on the device"


def test_cuda_artifact_without_gpu_gives_a_clear_error(tmp_path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present; tests/device runs the artifact")
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    art = build(onnx_path, "cuda", tmp_path / "cuda")
    with pytest.raises(InputError, match="no usable CUDA device"):
        load(art)


def test_cuda_artifact_bench_in_a_fresh_process_says_no_gpu(tmp_path):
    import tvm

    from helpers import edgeopt_cli

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present; tests/device runs the artifact")
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    build(onnx_path, "cuda", tmp_path / "cuda")
    r = edgeopt_cli("bench", tmp_path / "cuda", "--repeat", "2")
    assert r.returncode == 2, r.stderr
    assert "no usable CUDA device" in r.stderr and "loader" not in r.stderr and "Traceback" not in r.stderr


def test_cuda_graphs_are_on_by_default_and_can_be_turned_off(tmp_path):
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    graph = build(onnx_path, BuildConfig(target="cuda"), out=tmp_path / "graph")
    assert b"vm.builtin.cuda_graph.run_or_capture" in graph.artifact.model_file.read_bytes()
    assert graph.record["config"]["cuda_graph"] is True and graph.record["config"]["precision"] == "fp32"
    plain = build(onnx_path, BuildConfig(target="cuda", cuda_graph=False), out=tmp_path / "plain")
    assert b"vm.builtin.cuda_graph.run_or_capture" not in plain.artifact.model_file.read_bytes()
    assert plain.record["config"]["cuda_graph"] is False


@pytest.mark.slow  # TVM registers its CUDA tensor intrinsics on first use: 30 s of CPU or more
def test_cuda_fp16_build_records_its_precision(tmp_path):
    onnx_path = export(tiny_conv_net(), example_inputs(), tmp_path / "m.onnx").path
    result = build(onnx_path, BuildConfig(target="cuda", precision="fp16"), out=tmp_path / "cuda")
    data = result.artifact.model_file.read_bytes()
    assert result.record["config"]["precision"] == "fp16" and result.record["config"]["cuda_graph"]
    assert b"vm.builtin.cuda_graph.run_or_capture" in data and FATBIN_MAGIC in data


def test_fp16_on_a_cpu_target_is_refused():
    with pytest.raises(InputError, match="precision 'fp16' needs a cuda target"):
        BuildConfig(target="cpu", precision="fp16")
    with pytest.raises(InputError, match="precision must be 'fp32' or 'fp16'"):
        BuildConfig(target="cuda", precision="bf16")
