"""An int8 value's float chain (dequantize -> activation -> quantize) becomes a 256-entry lookup
table: the compiled result is bit for bit the chain's, and what is not a function of one int8
tensor alone (per-channel constants, two int8 inputs) is left as it is."""

import numpy as np
import pytest
import torch

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.int8_lookup import int8_lookup_tables
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.runtimes import load


def _chains_module(per_channel_bias: bool = False):
    """One function over x (uint8) and y (int8), shape (1, 4, 8, 8), returning
    - SiLU of x as QDQ leaves it: dq -> sigmoid -> q -> dq -> multiply(dq, .) -> q (uint8),
    - hardswish of y with its clip folded into a quantize, ending in int8,
    - x + y dequantized, requantized (two int8 inputs: no table)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "uint8"))
    y = relax.Var("y", relax.TensorType((1, 4, 8, 8), "int8"))
    f32 = lambda v: relax.const(v, "float32")  # noqa: E731
    with bb.function("main", [x, y]):
        with bb.dataflow():
            dx = bb.emit(relax.op.dequantize(x, f32(0.05), relax.const(128, "uint8"), axis=1))
            sig = bb.emit(relax.op.sigmoid(dx))
            qs = bb.emit(relax.op.quantize(sig, f32(1 / 255), relax.const(0, "uint8"), axis=1, out_dtype="uint8"))
            ds = bb.emit(relax.op.dequantize(qs, f32(1 / 255), relax.const(0, "uint8"), axis=1))
            silu = bb.emit(relax.op.multiply(dx, ds))
            if per_channel_bias:
                silu = bb.emit(relax.op.add(silu, relax.const(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1))))
            out1 = bb.emit(relax.op.quantize(silu, f32(0.03), relax.const(10, "uint8"), axis=1, out_dtype="uint8"))
            dy = bb.emit(relax.op.dequantize(y, f32(0.04), relax.const(-3, "int8"), axis=1))
            plus3 = bb.emit(relax.op.add(dy, f32(3.0)))
            clipped = bb.emit(relax.op.quantize(plus3, f32(6 / 255), relax.const(0, "uint8"), axis=1, out_dtype="uint8"))
            hs = bb.emit(relax.op.multiply(dy, relax.op.dequantize(clipped, f32(6 / 255), relax.const(0, "uint8"), axis=1)))
            hs6 = bb.emit(relax.op.divide(hs, f32(6.0)))
            out2 = bb.emit(relax.op.quantize(hs6, f32(0.02), relax.const(0, "int8"), axis=1, out_dtype="int8"))
            both = bb.emit(relax.op.add(dx, dy))
            out3 = bb.emit(relax.op.quantize(both, f32(0.1), relax.const(0, "int8"), axis=1, out_dtype="int8"))
            result = bb.emit_output(relax.Tuple([out1, out2, out3]))
        bb.emit_func_output(result)
    return bb.get()


def _run(mod, x, y):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return [o.numpy() for o in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y))]


@pytest.mark.parametrize("per_channel_bias", [False, True])
def test_tables_compute_exactly_what_the_chains_compute(per_channel_bias):
    mod = _chains_module(per_channel_bias)
    new, count = int8_lookup_tables(mod)
    text = new["main"].script(show_meta=False)
    assert count == 2 and text.count("int8_lookup") == 2 and "R.sigmoid" not in text
    assert "R.divide" not in text  # the hardswish is one table in both
    # with a per-channel constant the SiLU's end is a function of the position too: its sigmoid
    # alone (quantize(sigmoid(dequantize(x)))) becomes the table, its multiply stays float
    assert text.count("R.multiply") == (1 if per_channel_bias else 0)
    rng = np.random.default_rng(0)
    # every value of both dtypes appears
    x = rng.permutation(np.arange(256, dtype=np.uint8)).reshape(1, 4, 8, 8)
    y = rng.permutation(np.arange(-128, 128, dtype=np.int8)).reshape(1, 4, 8, 8)
    expected, got = _run(mod, x, y), _run(new, x, y)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype
        np.testing.assert_array_equal(g, e)


class ConvActivations(torch.nn.Module):
    """Convs followed by SiLU and hardswish: activations no int8 conv of the plugin absorbs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = torch.nn.functional.silu(self.a(x))
        x = torch.nn.functional.hardswish(self.b(x))
        return self.c(x)


@pytest.mark.integration
def test_int8_build_runs_its_activations_as_tables_and_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    sample = lambda: rng.normal(size=(1, 3, 16, 16)).astype(np.float32)  # noqa: E731
    fp32 = export(ConvActivations().eval(), ExportConfig(), sample(), out=tmp_path / "fp32.onnx").path
    q = quantize(fp32, QuantizeConfig(method="minmax"), [sample() for _ in range(16)], out=tmp_path / "int8.onnx").path
    built = build(q, BuildConfig(target="cpu"), out=tmp_path / "tvm")
    assert built.record["metrics"]["int8_lookup_tables"] >= 2
    ort, tvm_runner = load(q), load(built.artifact)
    for _ in range(4):
        x = sample()
        (ref,), (got,) = ort.run([x]), tvm_runner.run([x])
        # onnxruntime's QLinear kernels round differently here and there: within a step or two
        # of the output scale, never a broken activation
        step = float(np.abs(ref).max()) / 127
        assert np.abs(got - ref).max() <= 3 * step, (np.abs(got - ref).max(), step)
