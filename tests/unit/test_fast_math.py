"""CPU builds compute erf / tanh as vectorizable polynomials (``BuildConfig.fast_math``):
outputs stay within float32 parity of onnxruntime; exp stays exact (TVM's fast exp overflows
early); ``fast_math=False`` keeps TVM's default lowering."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeopt.compile import BuildConfig, build, export
from edgeopt.core.errors import InputError
from edgeopt.runtimes import load


class Transcendental(nn.Module):
    """GELU (erf) on the input itself (not after a matmul oneDNN would fuse it into), softmax
    (exp), tanh and sigmoid, over values from -12 to 12."""

    def forward(self, x):
        a = nn.functional.gelu(x)
        b = torch.softmax(x, dim=-1)
        c = torch.tanh(x) + torch.sigmoid(x)
        e = torch.exp(x + 76.5)  # up to exp(88.5): finite in float32, inf with TVM's fast exp
        return a, b, c, e / e.sum(-1, keepdim=True)


@pytest.mark.integration
def test_fast_math_matches_onnxruntime_and_can_be_turned_off(tmp_path):
    x = torch.linspace(-12, 12, 4 * 96).reshape(4, 96)
    fp32 = export(Transcendental().eval(), None, x, out=tmp_path / "m.onnx").path
    ref = load(fp32).run([x.numpy()])
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert "Erf" in ops and "Softmax" in ops and "Tanh" in ops
    errors = {}
    for fast in (True, False):
        b = build(fp32, BuildConfig(target="cpu", kernels="tvm", fast_math=fast), out=tmp_path / f"tvm-{fast}")
        assert b.record["config"]["fast_math"] is fast
        library = (b.artifact.path / "model.so").read_bytes()
        assert (b"fast_erf" in library) is fast and (b"fast_tanh" in library) is fast
        assert b"fast_exp" not in library
        got = load(b.artifact).run([x.numpy()])
        assert all(np.isfinite(g).all() for g in got)
        errors[fast] = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1.0)) for g, r in zip(got, ref))
    assert errors[True] < 2e-6, errors
    assert errors[False] < 1e-6, errors


def test_fast_math_is_a_bool():
    with pytest.raises(InputError, match="fast_math"):
        BuildConfig(target="cpu", fast_math="yes")


class SiLU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


@pytest.mark.integration
def test_sigmoid_is_the_tanh_polynomial_not_an_expf_call_per_element(tmp_path):
    x = torch.linspace(-30, 30, 2 * 512).reshape(2, 512)
    fp32 = export(SiLU().eval(), None, x, out=tmp_path / "silu.onnx").path
    ref = load(fp32).run([x.numpy()])[0]
    for fast in (True, False):
        b = build(fp32, BuildConfig(target="cpu", kernels="tvm", fast_math=fast), out=tmp_path / f"tvm-{fast}")
        assert (b"expf" in (b.artifact.path / "model.so").read_bytes()) is not fast
        got = load(b.artifact).run([x.numpy()])[0]
        assert float(np.abs(got - ref).max()) / float(np.abs(ref).max()) < 1e-6
