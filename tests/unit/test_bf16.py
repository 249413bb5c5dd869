"""``precision: bf16`` for CPU builds: the convs and matmuls oneDNN takes run as bf16 kernels
(bfloat16 weights, fp32 accumulation and outputs); a target or CPU without avx512_bf16 is refused
naming the flag, and fp16 on a CPU is refused."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch

from edgeopt.compile import BuildConfig
from edgeopt.core.errors import InputError
from edgeopt.runtimes import cpu_features
from edgeopt.runtimes.cpu_features import host_flags

x86_linux = pytest.mark.skipif(platform.machine() != "x86_64" or host_flags() is None,
                               reason="reads an x86-64 Linux host's /proc/cpuinfo")


def _onednn_missing():
    from edgeopt.compile.native_build import onednn_available

    return onednn_available()


needs_bf16_cpu = pytest.mark.skipif(
    platform.machine() != "x86_64" or "avx512_bf16" not in (host_flags() or set()) or _onednn_missing() is not None,
    reason="needs an x86-64 CPU with avx512_bf16 and oneDNN to build the plugin")


@x86_linux
def test_a_cpu_without_avx512_bf16_is_refused_naming_the_flag(monkeypatch):
    without = {f for f in host_flags() if f not in ("avx512_bf16", "amx_bf16")}
    monkeypatch.setattr(cpu_features, "host_flags", lambda: without)
    with pytest.raises(InputError, match=r"precision 'bf16' on a CPU needs avx512_bf16.*which target 'cpu' \(this CPU, by its flags\) lacks"):
        BuildConfig(target="cpu", precision="bf16")


@x86_linux
def test_bf16_and_fp16_are_checked_against_the_target():
    with pytest.raises(InputError, match="avx512_bf16.*target 'cpu:generic' lacks"):
        BuildConfig(target="cpu:generic", precision="bf16")
    with pytest.raises(InputError, match="avx512_bf16.*target 'cpu:znver3' lacks"):
        BuildConfig(target="cpu:znver3", precision="bf16")
    with pytest.raises(InputError, match="needs an x86-64 CPU target"):
        BuildConfig(target="arm", precision="bf16")
    with pytest.raises(InputError, match="needs an x86-64 CPU target"):
        BuildConfig(target="cuda", precision="bf16")
    with pytest.raises(InputError, match="kernels 'tvm' has no bf16 path"):
        BuildConfig(target="cpu:znver4", precision="bf16", kernels="tvm")
    BuildConfig(target="cpu:znver4", precision="bf16")  # Zen 4 has it
    # fp16 on a CPU: refused naming the flag where the target lacks it, and refused where it has
    # it too (the plugin makes no float16 primitives); cuda keeps fp16
    with pytest.raises(InputError, match="precision 'fp16' on a CPU needs avx512_fp16.*'cpu:znver4' lacks"):
        BuildConfig(target="cpu:znver4", precision="fp16")
    with pytest.raises(InputError, match="no float16 CPU kernels"):
        BuildConfig(target="cpu:sapphirerapids", precision="fp16")
    with pytest.raises(InputError, match="needs a cuda target"):
        BuildConfig(target="arm", precision="fp16")
    BuildConfig(target="cuda", precision="fp16")
    with pytest.raises(InputError, match="precision must be one of fp32, fp16, bf16"):
        BuildConfig(precision="int4")


@x86_linux
@pytest.mark.integration
def test_compile_cli_refuses_bf16_without_the_flag_in_one_line(tmp_path, monkeypatch, capsys):
    from edgeopt.compile import export
    from edgeopt.pipeline.cli import main
    from tests.helpers import tiny_conv_net

    onnx_path = export(tiny_conv_net(), None, torch.zeros(1, 1, 8, 8), out=tmp_path / "m.onnx").path
    without = {f for f in host_flags() if f not in ("avx512_bf16", "amx_bf16")}
    monkeypatch.setattr(cpu_features, "host_flags", lambda: without)
    assert main(["compile", str(onnx_path), "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "avx512_bf16" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "bf16").exists()


class ConvMlp(torch.nn.Module):
    """A stem conv with ReLU6, a depthwise conv, a grouped conv and a 1x1 joined by a residual add,
    and a GELU MLP over the tokens: every kind of call a bf16 build makes."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = torch.nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.skip = torch.nn.Conv2d(32, 64, 1, bias=False)
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.stem(x))
        x = torch.relu(self.dw(x))
        y = torch.relu(self.grouped(x) + self.skip(x))
        tokens = y.flatten(2).transpose(1, 2)
        return self.fc2(torch.nn.functional.gelu(self.fc1(tokens))).mean(1)


@needs_bf16_cpu
@pytest.mark.integration
def test_bf16_build_matches_fp32_within_bf16_tolerance_and_records_its_precision(tmp_path, monkeypatch):
    from edgeopt.compile import build, export
    from edgeopt.compile.tvm_build import describe
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    onnx_path = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    fp32 = build(onnx_path, BuildConfig(target="cpu"), out=tmp_path / "fp32")
    bf16 = build(onnx_path, BuildConfig(target="cpu", precision="bf16"), out=tmp_path / "bf16")
    metrics = bf16.record["metrics"]
    assert metrics["kernels"] == "onednn" and metrics["bf16_ops"] == 6  # 4 convs, 2 matmuls
    assert bf16.record["config"]["precision"] == "bf16"
    assert "6 bf16 ops" in describe(metrics, bf16.record["config"])
    assert "avx512bf16" in bf16.artifact.manifest["cpu_features"]
    ort = load(onnx_path)
    xs = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(8)]
    fp32_runner, bf16_runner = load(fp32.artifact), load(bf16.artifact)
    for x in xs:
        want = ort.run([x])[0]
        scale = np.abs(want).max()
        fp32_err = np.abs(fp32_runner.run([x])[0] - want).max() / scale
        bf16_err = np.abs(bf16_runner.run([x])[0] - want).max() / scale
        assert fp32_err < 1e-4
        # bf16 keeps 8 bits of mantissa: within 2e-2 of fp32, and visibly not fp32 itself
        assert 1e-4 < bf16_err < 2e-2
    # the weights are stored in half the bytes (most of the library is weights)
    assert (bf16.artifact.path / "model.so").stat().st_size < (fp32.artifact.path / "model.so").stat().st_size
    # on a CPU without avx512_bf16 (faked flags) the artifact refuses to load, naming the feature
    monkeypatch.setattr(cpu_features, "host_flags",
                        lambda: {f for f in host_flags() if f not in ("avx512_bf16", "amx_bf16")})
    with pytest.raises(InputError, match=r"built for a CPU with avx512bf16, which this CPU lacks"):
        load(bf16.artifact)


@needs_bf16_cpu
@pytest.mark.integration
def test_a_bf16_call_that_only_feeds_another_writes_bf16(tmp_path):
    """The stem conv's output feeds only the depthwise conv: it is written in bf16 (no fp32 round
    trip); the depthwise conv's feeds two convs, a residual join's output a TVM op: fp32."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import export
    from edgeopt.compile.onednn_offload import offload_to_onednn

    onnx_path = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    mod = relax.transform.DecomposeOpsForInference()(from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=False))
    mod, counts = offload_to_onednn(mod, int8=False, bf16=True)
    calls = [b.value for _, f in mod.functions_items() if isinstance(f, relax.Function)
             for block in f.body.blocks for b in block.bindings
             if getattr(b.value, "op", None) is not None and getattr(b.value.op, "name", "") == "relax.call_dps_packed"]
    out_dtypes = [c.ty.dtype for c in calls if c.args[0].global_symbol in ("edgeopt.onednn.conv2d", "edgeopt.onednn.matmul")]
    assert (counts["conv2d"], counts["matmul"]) == (4, 2)
    assert out_dtypes.count("bfloat16") == 2  # stem -> depthwise, fc1 -> fc2
    assert all(c.args[1].fields[4].ty.dtype == "bfloat16" for c in calls if c.args[0].global_symbol == "edgeopt.onednn.conv2d")


@needs_bf16_cpu
@pytest.mark.integration
def test_a_model_with_nothing_for_onednn_is_not_built_as_bf16(tmp_path):
    from edgeopt.compile import build, export

    class Scale(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x * 2.0 + 1.0)

    onnx_path = export(Scale(), None, torch.zeros(1, 4), out=tmp_path / "m.onnx").path
    with pytest.raises(InputError, match="no conv or matmul .* runs on oneDNN"):
        build(onnx_path, BuildConfig(target="cpu", precision="bf16"), out=tmp_path / "bf16")


@needs_bf16_cpu
@pytest.mark.integration
def test_a_bf16_build_of_an_int8_model_keeps_its_int8_convs(tmp_path):
    """A study's int8 variant on a bf16 target: the QDQ convs stay int8 (not refused for having
    no float conv), and the output matches the int8 model on onnxruntime."""
    from edgeopt.compile import build, export
    from edgeopt.compress.quantize import QuantizeConfig, quantize
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    fp32 = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    calib = np.random.default_rng(0).standard_normal((8, 1, 3, 32, 32)).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(), list(calib), out=tmp_path / "q.onnx").path
    result = build(int8, BuildConfig(target="cpu", precision="bf16"), out=tmp_path / "bf16")
    metrics = result.record["metrics"]
    # every conv and matmul quantized: nothing left in float for bf16, and still built
    assert metrics["int8_ops"] == 6 and metrics["bf16_ops"] == 0 and metrics["kernels"] == "onednn"
    x = calib[0]
    want = load(int8).run([x])[0]
    assert np.abs(load(result.artifact).run([x])[0] - want).max() / np.abs(want).max() < 0.1


@needs_bf16_cpu
@pytest.mark.integration
def test_an_artifact_whose_plugin_is_newer_than_the_one_serving_is_refused(tmp_path):
    """The first plugin copy loaded serves every artifact of the process; an older one would
    reject a bf16 weight (or ignore a newer activation code): loading says so instead."""
    import tvm_ffi

    from edgeopt.compile import build, export
    from edgeopt.runtimes import load

    onnx_path = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    art = build(onnx_path, BuildConfig(target="cpu", precision="bf16"), out=tmp_path / "bf16").artifact
    load(art)
    version = int(tvm_ffi.get_global_func("edgeopt.onednn.version")())
    tvm_ffi.register_global_func("edgeopt.onednn.version", lambda: version - 1, override=True)
    try:
        with pytest.raises(InputError, match=rf"is version {version}, but version {version - 1}, loaded earlier"):
            load(art)
    finally:
        tvm_ffi.register_global_func("edgeopt.onednn.version", lambda: version, override=True)
    load(art)


def test_recipe_labels_carry_the_precision(tmp_path):
    from edgeopt.pipeline.measure import runtime_target
    from edgeopt.pipeline.recipe import load_recipe

    if "avx512_bf16" not in (host_flags() or set()):
        pytest.skip("the recipe's cpu target needs avx512_bf16 for bf16")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\nvariants:\n  fp32: []\n"
                      "targets:\n  - {runtime: tvm, target: cpu}\n  - {runtime: tvm, target: cpu, precision: bf16}\n")
    fp32, bf16 = load_recipe(recipe).targets
    assert (fp32.label, bf16.label) == ("tvm-cpu", "tvm-cpu-bf16")
    assert runtime_target("tvm", bf16.build).endswith("/bf16")
    assert not runtime_target("tvm", fp32.build).endswith("bf16")


@needs_bf16_cpu
@pytest.mark.slow
@pytest.mark.integration
def test_resnet18_bf16_agrees_with_fp32_on_random_inputs(tmp_path):
    """Zoo ResNet-18 (random weights): top-1 agreement of the bf16 build with fp32 on 200 random
    inputs at least 99% (the bar on 1,000 inputs; 200 keep the test to a minute)."""
    from edgeopt.compile import build, export
    from edgeopt.pipeline.models import load_model
    from edgeopt.runtimes import load

    loaded = load_model("zoo:resnet18", seed=0)
    onnx_path = export(loaded.module.eval(), None, torch.randn(1, 3, 224, 224), out=tmp_path / "r18.onnx").path
    bf16 = load(build(onnx_path, BuildConfig(target="cpu", precision="bf16"), out=tmp_path / "bf16").artifact)
    ort = load(onnx_path)
    rng = np.random.default_rng(0)
    same = 0
    for _ in range(200):
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        same += int(np.argmax(bf16.run([x])[0]) == np.argmax(ort.run([x])[0]))
    assert same / 200 >= 0.99


@needs_bf16_cpu
@pytest.mark.integration
def test_precision_auto_times_both_here_and_says_which_it_kept(tmp_path):
    from edgeopt.compile import build, export
    from edgeopt.compile.tvm_build import describe
    from edgeopt.runtimes import load

    torch.manual_seed(0)
    onnx_path = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    result = build(onnx_path, BuildConfig(target="cpu", precision="auto"), out=tmp_path / "auto")
    metrics = result.record["metrics"]
    assert result.record["config"]["precision"] == "auto"
    assert metrics["precision"] in ("fp32", "bf16")
    assert set(metrics["precision_times_ms"]) == {"fp32", "bf16"}
    assert "on this host" in metrics["precision_why"] and "cosine" in metrics["precision_why"]
    assert (metrics.get("bf16_ops", 0) == 6) is (metrics["precision"] == "bf16")
    assert f"precision {metrics['precision']} (" in " ".join(describe(metrics, result.record["config"]))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = load(onnx_path).run([x])[0]
    assert np.abs(load(result.artifact).run([x])[0] - want).max() / np.abs(want).max() < 2e-2


class Cancelling(torch.nn.Module):
    """x @ A - x @ (A * (1 + 2**-9)): the second weight rounds to A in bfloat16 (8 bits of
    mantissa), so a bf16 build computes zeros where fp32 computes -2**-9 x @ A."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(128, 256, bias=False)
        with torch.no_grad():
            self.fc.weight[:, :64] = 1.0
            self.fc.weight[:, 64:] = -(1.0 + 2.0 ** -9)

    def forward(self, x):
        return self.fc(torch.cat([x, x], dim=-1))


@needs_bf16_cpu
@pytest.mark.integration
def test_precision_auto_keeps_fp32_where_bf16_strays_and_for_int8_or_targets_without_bf16(tmp_path):
    from edgeopt.compile import build, export
    from edgeopt.compress.quantize import QuantizeConfig, quantize

    onnx_path = export(Cancelling().eval(), None, torch.randn(1, 64), out=tmp_path / "c.onnx").path
    metrics = build(onnx_path, BuildConfig(target="cpu", precision="auto"), out=tmp_path / "c").record["metrics"]
    assert metrics["precision"] == "fp32" and "bf16 strays from fp32" in metrics["precision_why"]
    assert not metrics.get("bf16_ops")
    # a target whose CPU has no avx512_bf16: fp32, no bf16 build tried
    metrics = build(onnx_path, BuildConfig(target="cpu:znver3", precision="auto"), out=tmp_path / "z").record["metrics"]
    assert metrics["precision"] == "fp32" and metrics["precision_why"] == "the target's CPU has no avx512_bf16"
    assert "precision_times_ms" not in metrics
    torch.manual_seed(0)
    fp32 = export(ConvMlp().eval(), None, torch.randn(1, 3, 32, 32), out=tmp_path / "m.onnx").path
    calib = np.random.default_rng(0).standard_normal((4, 1, 3, 32, 32)).astype(np.float32)
    int8 = quantize(fp32, QuantizeConfig(), list(calib), out=tmp_path / "q.onnx").path
    metrics = build(int8, BuildConfig(target="cpu", precision="auto"), out=tmp_path / "q").record["metrics"]
    assert metrics["precision"] == "fp32" and "int8" in metrics["precision_why"]
