"""Transposed, grouped and depthwise convs build on the CPU with every ``kernels`` choice, and a
layout or kernel choice that fails falls back and says so (``compile/conv_layouts.py``,
``tvm_build``'s ``kernels: auto``). ``tests/cross/test_cuda_build.py`` builds the same conv kinds
for cuda."""

from __future__ import annotations

import numpy as np
import pytest

from conv_kinds import NETWORKS, conv_kind_input, conv_kind_net

pytestmark = pytest.mark.integration


def _export(model, x, path):
    from edgeopt.compile import ExportConfig, export

    return export(model, ExportConfig(), x, out=path).artifact.path


def _max_relative_error(artifact, onnx_path, x) -> float:
    from edgeopt.runtimes import load

    got, want = load(artifact).run([x]), load(onnx_path).run([x])
    return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want))


def _network(name, tmp_path):
    model = NETWORKS[name]().eval()
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    return _export(model, x, tmp_path / f"{name}-onnx"), x


def test_an_op_tvm_cannot_lower_in_nhwc_keeps_its_layout_and_is_named(tmp_path):
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile.conv_layouts import convert_layouts, nhwc_convs

    onnx_dir = _export(conv_kind_net("transposed"), conv_kind_input(), tmp_path / "m")
    mod = from_onnx(onnx.load(str(onnx_dir / "model.onnx")), keep_params_in_input=False)
    converted, fallbacks = convert_layouts(mod, nhwc_convs())
    text = converted.script()
    assert fallbacks == ["relax.nn.conv2d_transpose kept NCHW/IOHW: TVM cannot lower it in NHWC/IOHW"]
    assert text.count('data_layout="NHWC"') == 2, "both plain convs are converted"
    assert 'R.nn.conv2d_transpose' in text and 'data_layout="NCHW", kernel_layout="IOHW"' in text
    legal = tvm.relax.transform.LegalizeOps()(converted)
    assert "R.nn.conv" not in legal.script(), "every conv lowers"


def test_when_convert_layout_fails_each_conv_is_converted_on_its_own(tmp_path, monkeypatch):
    """Relax's ConvertLayout raised on a shipped model (silero-vad: std::bad_alloc); the build
    then converts each conv between two transposes, so its convs still reach oneDNN in NHWC, and
    says so."""
    from tvm import relax

    from edgeopt.compile import BuildConfig, build

    def failing(*args, **kwargs):
        raise RuntimeError("std::bad_alloc")

    monkeypatch.setattr(relax.transform, "ConvertLayout", failing)
    onnx_dir, x = _network("shuffle", tmp_path)  # grouped 1x1 convs, a channel shuffle, a depthwise conv
    result = build(onnx_dir, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "each")
    metrics = result.record["metrics"]
    assert any("layout conversion failed (std::bad_alloc); each conv converted on its own" in line
               for line in metrics["layout_fallbacks"]), metrics.get("layout_fallbacks")
    assert metrics["library_ops"]["conv2d"] >= 2
    assert _max_relative_error(result.artifact, onnx_dir, x) < 1e-4


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_networks_build_with_kernels_auto_and_match_onnxruntime(tmp_path, name):
    from edgeopt.compile import BuildConfig, build

    onnx_dir, x = _network(name, tmp_path)
    result = build(onnx_dir, BuildConfig(target="cpu"), out=tmp_path / "auto")
    assert _max_relative_error(result.artifact, onnx_dir, x) < 1e-4
    fallbacks = result.record["metrics"].get("layout_fallbacks", [])
    has_transposed = name == "unet"
    if result.record["metrics"]["kernels"] == "onednn":  # NHWC convs: the transposed one stays NCHW
        assert any("conv2d_transpose kept NCHW" in line for line in fallbacks) == has_transposed


def test_int8_unet_builds_with_kernels_auto_like_with_tvm(tmp_path):
    import edgeopt.compress as ec
    from edgeopt.compile import BuildConfig, build
    from edgeopt.runtimes import load

    onnx_dir, x = _network("unet", tmp_path)
    calib = [np.random.default_rng(i).standard_normal(x.shape).astype(np.float32) for i in range(4)]
    int8 = ec.quantize(onnx_dir, ec.QuantizeConfig(method="minmax"), calib, out=tmp_path / "int8").artifact.path
    auto = build(int8, BuildConfig(target="cpu"), out=tmp_path / "auto")
    tvm_kernels = build(int8, BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "tvm")
    assert auto.record["config"]["int8"] and auto.record["metrics"]["int8_ops"] > 0
    want = load(int8).run([x])[0]  # onnxruntime on the QDQ model
    for result in (auto, tvm_kernels):  # a few rounding steps of int8 (0.6% measured), no more
        got = load(result.artifact).run([x])[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 0.02


def test_a_failing_onednn_build_falls_back_to_tvm_kernels_and_says_why(tmp_path, monkeypatch):
    from edgeopt.compile import BuildConfig, build, onednn_offload, tvm_build

    if tvm_build.kernel_source(BuildConfig().spec, BuildConfig())[0] != "onednn":
        pytest.skip("kernels auto does not pick oneDNN on this machine")

    def broken(*args, **kwargs):
        raise RuntimeError("a kernel choice TVM cannot build")

    monkeypatch.setattr(onednn_offload, "offload_to_onednn", broken)
    x = conv_kind_input()
    onnx_dir = _export(conv_kind_net("plain"), x, tmp_path / "m")
    lines = []
    result = build(onnx_dir, BuildConfig(target="cpu"), out=tmp_path / "art", progress=lines.append)
    metrics = result.record["metrics"]
    assert metrics["kernels"] == "tvm" and "plugins" not in result.artifact.manifest
    assert "oneDNN build failed (a kernel choice TVM cannot build)" in metrics["kernels_why"]
    assert metrics["kernel_fallback"] == metrics["kernels_why"]
    assert any(line.startswith("kernels fallback: ") for line in lines)
    assert _max_relative_error(result.artifact, onnx_dir, x) < 1e-4


def test_a_failing_tvm_build_is_not_hidden_by_the_fallback(tmp_path, monkeypatch):
    """kernels tvm asked for: nothing to fall back to, the error reaches the caller."""
    from edgeopt.compile import BuildConfig, build, tvm_build

    def broken(*args, **kwargs):
        raise RuntimeError("TVM cannot build this")

    monkeypatch.setattr(tvm_build, "lower_and_compile", broken)
    onnx_dir = _export(conv_kind_net("plain"), conv_kind_input(), tmp_path / "m")
    with pytest.raises(RuntimeError, match="TVM cannot build this"):
        build(onnx_dir, BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_cli_compile_prints_the_layout_fallback(tmp_path):
    from helpers import edgeopt_cli

    onnx_dir = _export(conv_kind_net("transposed"), conv_kind_input(), tmp_path / "m")
    r = edgeopt_cli("compile", onnx_dir / "model.onnx", "--target", "cpu", "--out", tmp_path / "art")
    assert r.returncode == 0, r.stderr
    if "kernels: onednn" in r.stdout:
        fallback = [ln for ln in r.stderr.splitlines() if ln.startswith("layout fallback: ")]
        assert fallback == ["layout fallback: relax.nn.conv2d_transpose kept NCHW/IOHW: TVM cannot lower "
                            "it in NHWC/IOHW"]
