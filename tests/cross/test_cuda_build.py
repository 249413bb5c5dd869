"""CUDA builds on a machine without GPU or driver: the artifact holds compiled device code."""

import shutil

import pytest

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from helpers import example_inputs, tiny_conv_net

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")

FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")


@pytest.mark.parametrize("target, arch", [("cuda", "sm_90"), ("cuda:sm_80", "sm_80")])
def test_cuda_artifact_has_compiled_kernels_not_source(tmp_path, target, arch):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    art = build(onnx_path, BuildConfig(target=target), out=tmp_path / "cuda").output
    data = art.model_file.read_bytes()
    assert art.manifest["target"]["kind"] == "cuda" and art.manifest["target"]["arch"] == arch
    assert FATBIN_MAGIC in data, "a CUDA fatbin is embedded"
    assert arch.encode() in data
    assert b"__global__" not in data, "no CUDA source left to compile on the device"


def test_cuda_artifact_without_gpu_gives_a_clear_error(tmp_path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present; tests/device runs the artifact")
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    art = build(onnx_path, BuildConfig(target="cuda"), out=tmp_path / "cuda").output
    with pytest.raises(InputError, match="no usable CUDA device"):
        load(art)


def test_cuda_artifact_bench_in_a_fresh_process_says_no_gpu(tmp_path):
    import tvm

    from helpers import edgeopt_cli

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present; tests/device runs the artifact")
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    build(onnx_path, BuildConfig(target="cuda"), out=tmp_path / "cuda")
    r = edgeopt_cli("bench", tmp_path / "cuda", "--repeat", "2")
    assert r.returncode == 2, r.stderr
    assert "no usable CUDA device" in r.stderr and "loader" not in r.stderr and "Traceback" not in r.stderr


def test_cuda_graphs_are_on_by_default_and_can_be_turned_off(tmp_path):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    graph = build(onnx_path, BuildConfig(target="cuda"), out=tmp_path / "graph")
    assert b"vm.builtin.cuda_graph.run_or_capture" in graph.artifact.model_file.read_bytes()
    assert graph.record["config"]["cuda_graph"] is True and graph.record["config"]["precision"] == "fp32"
    plain = build(onnx_path, BuildConfig(target="cuda", cuda_graph=False), out=tmp_path / "plain")
    assert b"vm.builtin.cuda_graph.run_or_capture" not in plain.artifact.model_file.read_bytes()
    assert plain.record["config"]["cuda_graph"] is False


@pytest.mark.slow  # TVM registers its CUDA tensor intrinsics on first use: 30 s of CPU or more
def test_cuda_fp16_build_records_its_precision(tmp_path):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    result = build(onnx_path, BuildConfig(target="cuda", precision="fp16"), out=tmp_path / "cuda")
    data = result.artifact.model_file.read_bytes()
    assert result.record["config"]["precision"] == "fp16" and result.record["config"]["cuda_graph"]
    assert b"vm.builtin.cuda_graph.run_or_capture" in data and FATBIN_MAGIC in data


def test_fp16_on_a_cpu_target_is_refused():
    with pytest.raises(InputError, match="precision 'fp16' on a CPU"):
        BuildConfig(target="cpu", precision="fp16")
    with pytest.raises(InputError, match="precision 'bf16' needs an x86-64 CPU target"):
        BuildConfig(target="cuda", precision="bf16")


# -- every conv kind the CPU builds, for cuda too ---------------------------------------------------
# Transposed convs once failed on cpu (kernels auto) and cuda: the NHWC layout given to convs
# reached them and TVM has them in NCHW only; grouped convs failed on cuda ("block
# group_conv2d_nhwc needs cross-thread reduction"). CONV_TARGETS: what each kind is built for.
CONV_TARGETS = {"cpu-auto": {"target": "cpu"}, "cpu-tvm": {"target": "cpu", "kernels": "tvm"},
                "cuda": {"target": "cuda"}}


@pytest.fixture(scope="module")
def conv_kind_models(tmp_path_factory):
    """kind -> (ONNX folder, input), exported once for every target."""
    from conv_kinds import CONV_KINDS, conv_kind_input, conv_kind_net

    folder, x = tmp_path_factory.mktemp("conv-kinds"), conv_kind_input()
    return {kind: (export(conv_kind_net(kind), ExportConfig(), x, out=folder / kind).artifact.path, x)
            for kind in CONV_KINDS}


def _check_built(result, onnx_dir, x, target):
    import numpy as np

    data = result.artifact.model_file.read_bytes()
    if target == "cuda":  # no GPU here: the artifact holds compiled device code
        assert FATBIN_MAGIC in data and b"__global__" not in data
        return
    got, want = load(result.artifact).run([x]), load(onnx_dir).run([x])
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() / np.abs(w).max() < 1e-4


#: The kinds that failed to build somewhere (transposed on cpu-auto and cuda, grouped on cuda) run
#: in every tier; the rest of the grid, 18 builds that never failed, in `make test-all` (slow).
_FAILED_BEFORE = ("grouped", "grouped_1x1", "transposed", "transposed_padded", "transposed_grouped")
_CONV_GRID = [pytest.param(kind, target, marks=() if kind in _FAILED_BEFORE else pytest.mark.slow)
              for kind in ["plain", "strided", "dilated", "grouped", "grouped_1x1", "depthwise", "pointwise",
                           "transposed", "transposed_padded", "transposed_grouped"]
              for target in sorted(CONV_TARGETS)]


@pytest.mark.parametrize("kind, target", _CONV_GRID)
def test_every_conv_kind_builds_for_every_target(conv_kind_models, tmp_path, kind, target):
    onnx_dir, x = conv_kind_models[kind]
    result = build(onnx_dir, BuildConfig(**CONV_TARGETS[target]), out=tmp_path / "art")
    _check_built(result, onnx_dir, x, target)
    fallbacks = result.record["metrics"].get("layout_fallbacks", [])
    nhwc = target == "cuda" or result.record["metrics"]["kernels"] == "onednn"
    assert any("conv2d_transpose kept NCHW" in f for f in fallbacks) == (nhwc and "transposed" in kind)
    if target == "cuda":
        assert any("grouped convs kept NCHW" in f for f in fallbacks) == kind.startswith("grouped")


@pytest.mark.parametrize("name", ["unet", "shuffle", "convnext"])
def test_conv_networks_build_for_cuda(tmp_path, name):
    import numpy as np

    from conv_kinds import NETWORKS

    model = NETWORKS[name]().eval()
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    onnx_dir = export(model, ExportConfig(), x, out=tmp_path / "onnx").artifact.path
    result = build(onnx_dir, BuildConfig(target="cuda"), out=tmp_path / "cuda")
    _check_built(result, onnx_dir, x, "cuda")


def test_nhwc_convs_that_fail_to_build_for_cuda_fall_back_to_nchw(conv_kind_models, tmp_path, monkeypatch):
    """A layout choice that fails for the whole cuda build: a grouped 1x1 conv given NHWC again (as
    before grouped convs were kept NCHW) fails in TVM's GPU lowering; the build is redone in NCHW
    and says so."""
    from edgeopt.compile import conv_layouts

    monkeypatch.setattr(conv_layouts, "is_grouped_not_depthwise", lambda call: False)
    onnx_dir, x = conv_kind_models["grouped_1x1"]
    lines = []
    result = build(onnx_dir, BuildConfig(target="cuda"), out=tmp_path / "art", progress=lines.append)
    _check_built(result, onnx_dir, x, "cuda")
    fallbacks = result.record["metrics"]["layout_fallbacks"]
    assert len(fallbacks) == 1 and fallbacks[0].startswith("NHWC convs failed to build for cuda (")
    assert "needs cross-thread reduction" in fallbacks[0] or "Check failed" in fallbacks[0]
    assert fallbacks[0].endswith("; every conv kept NCHW")
    assert f"layout fallback: {fallbacks[0]}" in lines
