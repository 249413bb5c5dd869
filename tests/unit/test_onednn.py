"""oneDNN kernels in TVM artifacts (``BuildConfig(kernels=...)``, ``compile/onednn_offload.py``,
``runtimes/onednn``): what is offloaded, parity with onnxruntime, how artifacts carry the plugin.

The models are odd on purpose: grouped and depthwise convs, a ReLU6 clip, a residual add that
joins two conv branches, a dilated conv, a Conv1d (not offloaded: TVM keeps it), a GELU MLP over
tokens, two outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeopt.core.errors import InputError

pytestmark = pytest.mark.integration


def _onednn_missing():
    from edgeopt.compile.native_build import onednn_available

    return onednn_available()


needs_onednn = pytest.mark.skipif(_onednn_missing() is not None, reason=str(_onednn_missing()))


class OddNet(torch.nn.Module):
    """Convs of every kind the plugin takes, a max pooling, a residual join of two conv branches,
    a Conv1d and a token MLP; two outputs."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = torch.nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4)
        self.skip = torch.nn.Conv2d(16, 32, 1, bias=False)
        self.conv1d = torch.nn.Conv1d(32, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(32, 48)
        self.fc2 = torch.nn.Linear(48, 5)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.dw(x)), 3, stride=1, padding=1)
        y = torch.relu(self.grouped(x) + self.skip(x))          # two convs joined by a residual add
        seq = self.conv1d(y.flatten(2))                           # (1, 8, 64)
        tokens = y.flatten(2).transpose(1, 2)                     # (1, 64, 32)
        logits = self.fc2(torch.nn.functional.gelu(self.fc1(tokens))).mean(1)
        return logits, seq


@pytest.fixture(scope="module")
def odd_onnx(tmp_path_factory):
    from edgeopt.compile.export import ExportConfig, export

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("odd") / "odd.onnx"
    export(OddNet().eval(), ExportConfig(), torch.randn(1, 3, 16, 16), out=path)
    return path


def _parity(artifact, onnx_path, **load_options):
    from edgeopt.runtimes import load

    tvm_runner = load(artifact, **load_options)
    ort = load(onnx_path)
    x = ort.example_inputs(seed=3)
    for got, want in zip(tvm_runner.run(x), ort.run(x)):
        assert got.shape == want.shape
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


@needs_onednn
def test_onednn_build_offloads_convs_and_matmuls_and_matches_onnxruntime(odd_onnx, tmp_path, monkeypatch):
    from edgeopt.compile import BuildConfig, build, onednn_offload

    # this model's pooling map is small enough for TVM to keep it (a oneDNN call costs more)
    small = build(odd_onnx, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "small")
    assert small.record["metrics"]["library_ops"]["max_pool2d"] == 0
    monkeypatch.setattr(onednn_offload, "MIN_POOL_ELEMENTS", 0)
    result = build(odd_onnx, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    metrics = result.record["metrics"]
    assert metrics["kernels"] == "onednn"
    # stem, dw, grouped + skip (two chains: the add joins them), the Conv1d (as a conv of height
    # 1), fc1 (with its GELU), fc2
    assert metrics["library_ops"] == {"conv2d": 5, "conv2d_transpose": 0, "matmul": 2, "batch_matmul": 0, "layer_norm": 0,
                                      "softmax": 0, "max_pool2d": 1, "conv2d_q": 0, "matmul_q": 0,
                                      "max_pool2d_q": 0}
    art = result.artifact
    assert art.manifest["plugins"] == ["libedgeopt_onednn.so"]
    assert (art.path / "libedgeopt_onednn.so").exists()
    _parity(art, odd_onnx, threads=2)


@needs_onednn
def test_native_runner_loads_the_artifact_plugin(odd_onnx, tmp_path):
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.native_build import runner_binary
    from edgeopt.runtimes import load

    art = build(odd_onnx, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art").artifact
    native, python = load(art, runtime="native", threads=2, provide_binary=runner_binary), load(art)
    x = python.example_inputs(seed=1)
    for a, b in zip(native.run(x), python.run(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_bundle_ships_onednn_with_the_plugin(odd_onnx, tmp_path):
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.bundle import make_bundle

    art = build(odd_onnx, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art").artifact
    bundle = make_bundle(art, tmp_path / "bundle")
    assert (bundle / "model" / "libedgeopt_onednn.so").exists()
    assert any(p.name.startswith("libdnnl") for p in (bundle / "lib").iterdir())
    # oneDNN 3.x's CPU runtime and the compiler runtime libdnnl.so.3 needs travel with it
    shipped = {p.name for p in (bundle / "lib").iterdir()}
    assert {"libdnnl.so.3", "libtbb.so.12", "libimf.so", "libintlc.so.5"} <= shipped, shipped


@needs_onednn
def test_auto_uses_onednn_untuned_and_tvm_kernels_stay_plugin_free(odd_onnx, tmp_path):
    from edgeopt.compile import BuildConfig, build

    auto = build(odd_onnx, BuildConfig(target="cpu"), out=tmp_path / "auto")
    assert auto.record["metrics"]["kernels"] == "onednn"
    assert "untuned" in auto.record["metrics"]["kernels_why"]
    own = build(odd_onnx, BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "tvm")
    assert own.record["metrics"]["kernels"] == "tvm"
    assert "plugins" not in own.artifact.manifest
    assert own.artifact.manifest["files"] == ["model.so"]


def test_kernels_is_checked_when_the_config_is_made():
    from edgeopt.compile import BuildConfig
    from edgeopt.compile.tvm_build import kernel_source

    with pytest.raises(InputError, match="kernels must be one of auto, tvm, onednn"):
        BuildConfig(kernels="mkl")
    with pytest.raises(InputError, match="needs an x86-64 CPU target"):
        BuildConfig(target="arm", kernels="onednn")
    with pytest.raises(InputError, match="needs an x86-64 CPU target"):
        BuildConfig(target="cuda", kernels="onednn")
    assert kernel_source(BuildConfig(target="arm").spec, BuildConfig(target="arm"))[0] == "tvm"
    assert kernel_source(BuildConfig(target="cuda").spec, BuildConfig(target="cuda"))[0] == "tvm"


def test_clip_as_relax_ops_turns_the_importers_clip_into_relax_ops(tmp_path):
    """TVM's ONNX importer lowers Clip to two call_tir kernels that pin NCHW; the pass makes
    them Relax maximum/minimum ops (which layouts and fusion see through), same numbers."""
    import onnx
    from onnx import TensorProto, helper
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile.onednn_offload import clip_as_relax_ops

    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], "clip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])])
    mod = clip_as_relax_ops(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    text = mod["main"].script()
    assert "call_tir" not in text and "R.maximum" in text and "R.minimum" in text


class Int8Net(torch.nn.Module):
    """Strided, depthwise and grouped convs, a residual, ReLU6, Hardswish (its HardSigmoid carries
    scalar constants), a max pooling in ceil mode, a classifier (a quantized output)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = torch.nn.Linear(16 * 5 * 5, 7)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.relu(self.grouped(torch.nn.functional.hardswish(self.dw(x))) + x)
        # 8x8 -> 5x5: the last window hangs over the bottom/right edge (more padding there)
        x = torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        return self.fc(x.flatten(1))


@needs_onednn
def test_int8_qdq_chains_run_as_onednn_int8_within_one_output_step(tmp_path, monkeypatch):
    """A QDQ model (edgeopt's default int8: u8 activations, s8 per-channel weights) becomes
    oneDNN u8s8 calls whose outputs match onnxruntime's int8 within one quantization step."""
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.runtimes import load

    from edgeopt.compile.export import ExportConfig, export

    torch.manual_seed(0)
    fp32 = tmp_path / "int8net.onnx"
    export(Int8Net().eval(), ExportConfig(), torch.randn(1, 3, 16, 16), out=fp32)
    calib = np.random.default_rng(0).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    int8 = tmp_path / "int8net-int8.onnx"
    quantize(fp32, QuantizeConfig(), list(calib), out=int8)
    from edgeopt.compile import onednn_offload

    monkeypatch.setattr(onednn_offload, "MIN_POOL_ELEMENTS", 0)  # its pooling map is small
    result = build(int8, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    ops = result.record["metrics"]["library_ops"]
    assert ops["conv2d_q"] >= 3 and ops["matmul_q"] >= 1
    assert ops["max_pool2d_q"] == 1 and ops["max_pool2d"] == 0  # on the uint8 tensor itself
    assert result.record["metrics"]["int8_ops"] == ops["conv2d_q"] + ops["matmul_q"]
    tvm_runner, ort = load(result.artifact), load(int8)
    x = ort.example_inputs(seed=2)
    got, want = tvm_runner.run(x)[0], ort.run(x)[0]
    assert np.abs(got - want).max() <= output_step(int8) * 1.001


class Sppf(torch.nn.Module):
    """YOLO's SPPF: one tensor read by a max pooling and by a concat (so onnxruntime's quantizer
    gives both one shared DequantizeLinear), pools of pools; then a global max pooling written
    as AdaptiveMaxPool2d (exported as a ReduceMax, which onnxruntime's symbolic shape inference
    cannot handle)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mix = torch.nn.Conv2d(24, 8, 1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        p1 = torch.nn.functional.max_pool2d(x, 5, stride=1, padding=2)
        p2 = torch.nn.functional.max_pool2d(p1, 5, stride=1, padding=2)
        y = torch.relu(self.mix(torch.cat([x, p1, p2], 1)))
        return self.head(torch.nn.functional.adaptive_max_pool2d(y, 1).flatten(1))


@needs_onednn
def test_int8_max_pools_sharing_a_dequantize_pool_the_integers(tmp_path, monkeypatch):
    from edgeopt.compile import BuildConfig, build, onednn_offload
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    fp32 = export(Sppf().eval(), ExportConfig(), torch.randn(1, 3, 12, 12), out=tmp_path / "sppf.onnx").path
    calib = np.random.default_rng(0).standard_normal((8, 1, 3, 12, 12)).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(debug_layers=0), list(calib), out=tmp_path / "q.onnx").path
    monkeypatch.setattr(onednn_offload, "MIN_POOL_ELEMENTS", 0)  # its pooling maps are small
    result = build(int8, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    assert result.record["metrics"]["library_ops"]["max_pool2d_q"] == 2
    x = load(int8).example_inputs(seed=3)
    got, want = load(result.artifact).run(x)[0], load(int8).run(x)[0]
    assert np.abs(got - want).max() <= output_step(int8) * 1.001


class Tcn(torch.nn.Module):
    """A temporal conv net: Conv1d on the model input (NCW, transposed at the edge), a dilated
    Conv1d joined by a residual add, a strided grouped Conv1d, a classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv1d(4, 16, 3, padding=1)
        self.c2 = torch.nn.Conv1d(16, 16, 3, padding=2, dilation=2)
        self.c3 = torch.nn.Conv1d(16, 8, 5, stride=2, padding=2, groups=2)
        self.fc = torch.nn.Linear(8 * 16, 3)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x)) + x
        return self.fc(torch.relu(self.c3(x)).flatten(1))


@needs_onednn
def test_int8_conv1d_runs_as_onednn_int8(tmp_path):
    """Every int8 Conv1d becomes a u8s8 oneDNN conv of height 1 (not a float conv on
    dequantized weights); outputs within one quantization step of onnxruntime int8."""
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    fp32 = export(Tcn().eval(), ExportConfig(), torch.randn(1, 4, 32), out=tmp_path / "tcn.onnx").path
    calib = np.random.default_rng(0).standard_normal((16, 1, 4, 32)).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(debug_layers=0), list(calib), out=tmp_path / "q.onnx").path
    result = build(int8, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    ops = result.record["metrics"]["library_ops"]
    assert ops["conv2d_q"] == 3 and ops["conv2d"] == 0 and ops["matmul_q"] == 1
    tvm_runner, ort = load(result.artifact), load(int8)
    for seed in range(4):
        x = ort.example_inputs(seed=seed)
        assert np.abs(tvm_runner.run(x)[0] - ort.run(x)[0]).max() <= output_step(int8) * 1.001


def test_compile_cli_rejects_onednn_for_a_non_x86_target_in_one_line(odd_onnx, tmp_path):
    from tests.helpers import edgeopt_cli

    r = edgeopt_cli("compile", odd_onnx, "--target", "arm", "--kernels", "onednn", "--out", tmp_path / "a")
    assert r.returncode == 2
    assert "kernels 'onednn' needs an x86-64 CPU target" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


class TinyAttention(torch.nn.Module):
    """Pre-norm self-attention and a GELU MLP over 10 tokens, as a ViT block writes them."""

    def __init__(self, dim=24, heads=3):
        super().__init__()
        self.heads, self.norm1, self.norm2 = heads, torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


@needs_onednn
def test_attention_block_runs_on_onednn_with_gelu_fused(tmp_path):
    """Layer norms, softmax and both attention matmuls go to oneDNN; the exporter's erf-GELU
    becomes the matmul's post-op (no erf left for TVM); outputs match onnxruntime."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compile.onednn_offload import offload_to_onednn

    torch.manual_seed(0)
    path = tmp_path / "attn.onnx"
    export(TinyAttention().eval(), ExportConfig(), torch.randn(1, 10, 24), out=path)
    mod, counts = offload_to_onednn(from_onnx(onnx.load(str(path)), keep_params_in_input=False))
    assert counts["layer_norm"] == 2 and counts["softmax"] == 1 and counts["batch_matmul"] == 2
    assert counts["matmul"] == 4
    assert "R.erf" not in mod["main"].script()
    art = build(path, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art").artifact
    _parity(art, path, threads=2)


def test_a_model_onednn_does_not_take_carries_no_plugin(tmp_path):
    """Only elementwise ops: nothing for oneDNN, so the artifact is a plain TVM one."""
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export

    class Gate(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x) + 1.0

    path = tmp_path / "gate.onnx"
    export(Gate().eval(), ExportConfig(), torch.randn(1, 8, 4), out=path)
    result = build(path, BuildConfig(target="cpu"), out=tmp_path / "art")
    assert result.record["metrics"]["kernels"] == "tvm"
    assert "plugins" not in result.artifact.manifest
    _parity(result.artifact, path)


def test_recipe_targets_differing_in_kernels_are_two_builds_and_duplicates_are_refused(tmp_path):
    from edgeopt.pipeline.recipe import parse_recipe

    base = "model: zoo:digits_cnn\ntask: digits\nvariants: {fp32: []}\ntargets:\n"
    two = parse_recipe(base + "  - {runtime: tvm, target: cpu}\n  - {runtime: tvm, target: cpu, kernels: tvm}\n")
    assert [t.label for t in two.targets] == ["tvm-cpu", "tvm-cpu-tvm"]
    with pytest.raises(InputError, match="targets 1 and 2 are both 'tvm-cpu'"):
        parse_recipe(base + "  - {runtime: tvm, target: cpu}\n  - {runtime: tvm, target: cpu}\n")


@needs_onednn
def test_models_of_the_same_shapes_loaded_one_after_another_keep_their_own_weights(tmp_path):
    """The plugin caches reordered weights per weight buffer: a model loaded after another was
    released must not find the first one's weights at a reused address."""
    import gc

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.runtimes import load

    x = [np.ones((1, 3, 8, 8), np.float32)]
    for seed in range(3):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 6 * 6, 4)).eval()
        path = tmp_path / f"m{seed}.onnx"
        export(model, ExportConfig(), torch.randn(1, 3, 8, 8), out=path)
        runner = load(build(path, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / f"a{seed}").artifact)
        np.testing.assert_allclose(runner.run(x)[0], load(path).run(x)[0], rtol=1e-5, atol=1e-6)
        del runner
        gc.collect()


@needs_onednn
def test_a_dynamic_batch_model_is_offloaded_and_runs_any_batch(tmp_path):
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    path = tmp_path / "dyn.onnx"
    export(Int8Net().eval(), ExportConfig(dynamic_batch=True), torch.randn(1, 3, 16, 16), out=path)
    result = build(path, BuildConfig(target="cpu"), out=tmp_path / "art")
    assert result.record["metrics"]["library_ops"]["conv2d"] == 3
    runner, ort = load(result.artifact), load(path)
    for batch in (1, 3):
        x = [np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)]
        got, want = runner.run(x)[0], ort.run(x)[0]
        assert got.shape == (batch, 7)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def _paddle_like_onnx(path):
    """Conv -> BatchNormalization -> HardSwish written as Paddle exports it (add 3, clip 0..6,
    multiply, divide by 6), a learnable affine with (1,)-shaped constants, a squeeze-excite
    branch closed by HardSigmoid, then Conv -> SiLU (sigmoid and multiply, as YOLO exports)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    c = 16
    inits = [const("w1", rng.standard_normal((c, 3, 3, 3)) * 0.3), const("gamma", rng.uniform(0.5, 1.5, c)),
             const("beta", rng.standard_normal(c) * 0.1), const("mean", rng.standard_normal(c) * 0.1),
             const("var", rng.uniform(0.5, 1.5, c)), const("three", [3.0]), const("zero", 0.0), const("six", 6.0),
             const("six1", [6.0]), const("scale", [1.3]), const("shift", [0.2]),
             const("wse1", rng.standard_normal((4, c, 1, 1)) * 0.3), const("wse2", rng.standard_normal((c, 4, 1, 1)) * 0.3),
             const("w2", rng.standard_normal((c, c, 3, 3)) * 0.1), const("b2", rng.standard_normal(c) * 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Add", ["bn", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["r6"]),
        helper.make_node("Mul", ["bn", "r6"], ["m"]),
        helper.make_node("Div", ["m", "six1"], ["hs"]),
        helper.make_node("Mul", ["hs", "scale"], ["sc"]),
        helper.make_node("Add", ["sc", "shift"], ["aff"]),
        helper.make_node("GlobalAveragePool", ["aff"], ["gap"]),
        helper.make_node("Conv", ["gap", "wse1"], ["se1"]),
        helper.make_node("Relu", ["se1"], ["se1r"]),
        helper.make_node("Conv", ["se1r", "wse2"], ["se2"]),
        helper.make_node("HardSigmoid", ["se2"], ["gate"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["aff", "gate"], ["excited"]),
        helper.make_node("Conv", ["excited", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["sig"]),
        helper.make_node("Mul", ["c2", "sig"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "paddle_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 24, 24])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@needs_onednn
def test_batch_norm_hardswish_hardsigmoid_and_silu_fuse_into_the_onednn_convs(tmp_path):
    """A batch norm folds into the conv before it; HardSwish and SiLU become the conv's post-op;
    a HardSigmoid's clip and the (1,)-shaped constants keep the NHWC layout (no transposes in
    the middle); the build matches onnxruntime."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.onednn_offload import offload_to_onednn

    path = _paddle_like_onnx(tmp_path / "paddle_like.onnx")
    mod = relax.transform.DecomposeOpsForInference()(from_onnx(onnx.load(str(path)), keep_params_in_input=False))
    mod, counts = offload_to_onednn(mod, target=tvm.target.Target("llvm"))
    assert counts["conv2d"] == 4
    text = mod["main"].script()
    for leftover in ("R.subtract", "R.sigmoid", "R.clip", "R.divide", "R.nn.relu"):
        assert leftover not in text, leftover
    assert text.count("R.permute_dims") == 2  # the model's input and output only
    assert "R.shape([1, 1, 1, 1, 1, 1, 1, 1, 1, 5])" in text and "R.shape([1, 1, 1, 1, 1, 1, 1, 1, 1, 4])" in text
    art = build(path, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art").artifact
    _parity(art, path, threads=2)


class UpNet(torch.nn.Module):
    """Transposed convs as decoders write them: stride 2 with output padding, a grouped one
    with dilation, each with a bias."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.grouped = torch.nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2, dilation=1)
        self.odd = torch.nn.ConvTranspose2d(4, 3, 3, stride=1, padding=2, dilation=2)

    def forward(self, x):
        return self.odd(torch.relu(self.grouped(torch.relu(self.up(torch.relu(self.down(x)))))))


@needs_onednn
def test_transposed_convs_run_on_onednn_deconvolution_and_match_onnxruntime(tmp_path):
    """Every ConvTranspose becomes oneDNN's deconvolution (TVM's own NCHW kernel for them is
    untuned and slow); grouped, dilated and output-padded ones match onnxruntime."""
    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export

    torch.manual_seed(0)
    path = tmp_path / "up.onnx"
    export(UpNet().eval(), ExportConfig(), torch.randn(1, 3, 20, 18), out=path)
    result = build(path, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    assert result.metrics["library_ops"]["conv2d_transpose"] == 3
    _parity(result.artifact, path, threads=2)


class ResBlocks(torch.nn.Module):
    """Two ResNet basic blocks: the second conv of each joins the block's input, then ReLU."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(16, 16, 3, padding=1) for _ in range(4))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for a, b in zip(self.convs[::2], self.convs[1::2]):
            x = torch.relu(b(torch.relu(a(x))) + x)
        return x


@needs_onednn
def test_int8_residual_joins_run_in_the_conv_that_feeds_them(tmp_path):
    """``quantize(relu(dequantize(conv_q) + dequantize(x)))`` becomes the conv's own epilogue
    (oneDNN's sum post-op, in the residual's scale): no float add is left, and the output stays
    within two output steps of onnxruntime's int8 (one rounding fewer than the QDQ chain)."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import BuildConfig, build
    from edgeopt.compile.export import ExportConfig, export
    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compile.onednn_offload import offload_to_onednn
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    fp32 = export(ResBlocks().eval(), ExportConfig(), torch.randn(1, 3, 16, 16), out=tmp_path / "res.onnx").path
    calib = np.random.default_rng(0).standard_normal((8, 1, 3, 16, 16)).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(), list(calib), out=tmp_path / "res-int8.onnx").path
    mod, counts = offload_to_onednn(from_onnx(onnx.load(str(int8)), keep_params_in_input=False),
                                    target=tvm.target.Target({"kind": "llvm"}))
    text = mod["main"].script(show_meta=False)
    assert counts["conv2d_q"] == 5 and "R.add" not in text
    joined = [line for line in text.splitlines() if "conv2d_q" in line and line.count("T.float64") == 3]
    assert len(joined) == 2  # lo, hi and the residual's scale
    result = build(int8, BuildConfig(target="cpu", kernels="onednn"), out=tmp_path / "art")
    tvm_runner, ort = load(result.artifact), load(int8)
    for seed in range(3):
        x = ort.example_inputs(seed=seed)
        got, want = tvm_runner.run(x)[0], ort.run(x)[0]
        assert np.abs(got - want).max() <= 2 * output_step(int8) * 1.001
