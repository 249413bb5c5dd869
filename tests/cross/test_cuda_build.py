"""CUDA builds on a machine without GPU or driver: the artifact holds compiled device code."""

import shutil

import pytest

from edgeopt.compile import build, export
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
