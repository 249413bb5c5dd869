"""TVM's own x86 convolutions in blocked layouts (``edgeopt.compile.blocked_layout``): fp32 and
uint8 x int8 convs in NCHW16c give the NCHW results, the layout travels through residual adds
and requantization, and a tuned int8 build runs VNNI dot products (``vpdpbusd``)."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
from edgeopt.compile.int8_rewrite import output_step
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.runtimes import load


class Blocks(nn.Module):
    """A 3-channel stem (one block of 3 in fp32; in int8 its channels padded to 4), dense 3x3 /
    dilated / 1x1 / strided convs and a depthwise conv (all blocked), a residual add without
    ReLU (a uint8 zero point other than 0, so a blocked conv reads explicitly padded input) and
    a Linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=2, dilation=2)
        self.c = nn.Conv2d(32, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 48, 1)
        self.down = nn.Conv2d(48, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        s = self.b(torch.relu(self.a(x))) + x
        t = torch.relu(self.c(s))
        y = torch.relu(self.pw(torch.relu(self.dw(t))))
        y = torch.relu(self.down(y))
        return self.fc(y.mean((2, 3)))


BLOCKED_CONVS = 7  # stem, a, b, c, dw, pw, down
SHAPE = (1, 3, 16, 16)


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocked")
    fp32 = export(Blocks().eval(), ExportConfig(), _inputs(1)[0], out=d / "fp32.onnx").path
    int8 = quantize(fp32, QuantizeConfig(debug_layers=0), _inputs(8, seed=1), out=d / "int8.onnx").path
    return d, fp32, int8


def _compile(path, blocked: bool):
    """(run function, Relax text) of an untuned build, with or without blocked layouts."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile import blocked_layout as bl
    from edgeopt.compile.int8_rewrite import rewrite_qdq_to_int8
    from edgeopt.compile.targets import host_cpu_target

    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod, _ = rewrite_qdq_to_int8(mod, keep_uint8=blocked)
    count = 0
    target = tvm.target.Target(host_cpu_target())
    if blocked:
        mod, count = bl.to_blocked_layout(mod)
        with target:
            mod = bl.legalize_blocked_convs()(mod)
    text = mod["main"].script(show_meta=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return (lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()), text, count


def test_blocked_fp32_matches_nchw_with_transforms_only_at_the_edges(models):
    _, fp32, _ = models
    nchw, _, _ = _compile(fp32, blocked=False)
    blocked, text, count = _compile(fp32, blocked=True)
    assert count == BLOCKED_CONVS
    assert text.count("conv2d_NCHWc") == BLOCKED_CONVS  # depthwise_conv2d_NCHWc included
    # into the stem, out before the head's reshape: nothing in between
    assert text.count("layout_transform") <= 2, text
    for x in _inputs(3, seed=5):
        np.testing.assert_allclose(blocked(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_blocked_uint8_convs_give_the_exact_integer_results(models):
    _, _, int8 = models
    nchw, _, _ = _compile(int8, blocked=False)  # int8 x int8 (activations shifted), NCHW
    blocked, text, count = _compile(int8, blocked=True)
    assert count == BLOCKED_CONVS
    assert text.count("conv2d_NCHWc_int8") + text.count("depthwise_conv2d_NCHWc") == BLOCKED_CONVS
    assert "R.quantize" not in text  # per-tensor quantize became arithmetic the layout passes through
    ort = load(int8)
    step = output_step(int8)
    for x in _inputs(4, seed=6):
        got = blocked(x)
        assert np.array_equal(got, nchw(x))
        assert np.max(np.abs(got - ort.run(x)[0])) <= step * 1.0001


def test_decomposed_quantize_rounds_like_tvm_and_onnxruntime():
    """Ties (x / scale = k + 0.5), saturation at both ends, and a negative zero point."""
    import tvm
    from tvm import relax

    from edgeopt.compile.blocked_layout import decompose_qdq

    x = np.array([[-300.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.49, 300.0, 0.0]], np.float32)
    for dtype, zp in (("uint8", 3), ("int8", -4)):
        bb = relax.BlockBuilder()
        v = relax.Var("x", relax.TensorType(x.shape, "float32"))
        with bb.function("main", [v]):
            q = bb.emit(relax.op.quantize(v, relax.const(1.0, "float32"), relax.const(zp, dtype), out_dtype=dtype))
            bb.emit_func_output(relax.op.dequantize(q, relax.const(0.5, "float32"), relax.const(zp, dtype)))
        mod = bb.get()
        outs = []
        for m in (mod, decompose_qdq(mod)):
            vm = relax.VirtualMachine(tvm.compile(m, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
            outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
        assert "quantize" not in decompose_qdq(mod)["main"].script(show_meta=False)
        np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.integration
def test_tuned_int8_build_uses_vnni_and_matches_onnxruntime(models):
    from edgeopt.compile.blocked_layout import has_vnni
    from edgeopt.compile.targets import host_cpu_target

    if not has_vnni(host_cpu_target()):
        pytest.skip("the host CPU has no AVX-512 VNNI")
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    d, _, int8 = models
    tune = TuneConfig(trials=24, trials_per_iter=2, population=16, db=str(d / "db"), cost_model="random")
    b = build(int8, BuildConfig(target="cpu", kernels="tvm", tune=tune), out=d / "tvm-int8")
    assert b.record["metrics"]["blocked_convs"] == BLOCKED_CONVS
    code = subprocess.run(["objdump", "-d", str(b.artifact.path / "model.so")], capture_output=True,
                          text=True, check=True).stdout
    assert "vpdpbusd" in code
    ort, tvm = load(int8), load(b.artifact)
    for x in _inputs(3, seed=7):
        assert np.max(np.abs(ort.run(x)[0] - tvm.run(x)[0])) <= output_step(int8) * 1.0001


@pytest.mark.integration
@pytest.mark.slow  # two tunings of a small model: over a minute and a half on 2 cores
def test_rounds_after_the_first_tune_only_where_the_time_is(tmp_path):
    """Round 1 gives every kernel one search iteration; later rounds only the kernels that
    hold most of the measured time."""
    # one conv with nearly all the arithmetic (10M multiply-adds), three small kernels
    small = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 256, 5), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256 * 10 * 10, 4)).eval()
    fp32 = export(small, ExportConfig(), _inputs(1)[0], out=tmp_path / "small.onnx").path
    first = TuneConfig(trials=1, trials_per_iter=2, population=16, db=str(tmp_path / "db"),
                       cost_model="random", blocked_layout=False)
    tasks = build(fp32, BuildConfig(target="cpu", kernels="tvm", tune=first),
                  out=tmp_path / "a").record["metrics"]["tuning"]["tasks"]
    more = TuneConfig(trials=4 * tasks, trials_per_iter=2, population=16, db=str(tmp_path / "db"),
                      cost_model="random", blocked_layout=False)
    tuning = build(fp32, BuildConfig(target="cpu", kernels="tvm", tune=more),
                   out=tmp_path / "b").record["metrics"]["tuning"]
    assert tuning["trials_after"] > tuning["trials_before"]
    chosen = tuning["round_tasks"]
    assert len(chosen) >= 2 and 0 < chosen[-1] < tasks, (chosen, tasks)


def test_a_transposed_conv_after_a_blocked_conv_builds_and_matches(tmp_path):
    """ConvTranspose's layout inference cannot take a blocked input: the layout goes back to
    NCHW before it (found by a new-user run: the whole build failed inside ConvertLayout)."""
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Hardswish(), nn.AvgPool2d(3, 2, padding=1),
                          nn.MaxPool2d(3, 2, ceil_mode=True), nn.ConvTranspose2d(32, 16, 2, stride=2),
                          nn.Conv2d(16, 16, 3, padding=1)).eval()
    fp32 = export(model, ExportConfig(), _inputs(1)[0], out=tmp_path / "t.onnx").path
    nchw, _, _ = _compile(fp32, blocked=False)
    blocked, text, count = _compile(fp32, blocked=True)
    assert count == 2 and "conv2d_transpose" in text
    x = _inputs(1, seed=9)[0]
    np.testing.assert_allclose(blocked(x), nchw(x), rtol=1e-4, atol=1e-5)
