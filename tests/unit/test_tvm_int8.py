"""int8 through TVM: the QDQ -> int8 Relax rewrite keeps int8 weights and matches onnxruntime."""

import numpy as np
import onnx
import pytest
import torch

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.int8_rewrite import output_step, rewrite_qdq_to_int8
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.runtimes import load
from helpers import example_inputs, tiny_conv_net


class ConvMLP(torch.nn.Module):
    """Padded conv with bias, grouped conv, then Gemm: every rewrite branch in one model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module", params=["tiny_conv_net", "conv_mlp"])
def qdq_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("tvmq")
    model = tiny_conv_net() if request.param == "tiny_conv_net" else ConvMLP().eval()
    fp32 = export(model, ExportConfig(), example_inputs(), out=d / "fp32.onnx").path
    calib = [example_inputs(seed=s) for s in range(16)]
    q = quantize(fp32, QuantizeConfig(method="minmax"), calib, out=d / "int8.onnx").path
    return d, fp32, q


def test_rewrite_makes_integer_convs_and_matmuls_with_int8_weights(qdq_model):
    from tvm.relax.frontend.onnx import from_onnx

    _, _, q = qdq_model
    mod = from_onnx(onnx.load(str(q)), keep_params_in_input=False)
    compute = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in onnx.load(str(q)).graph.node)
    new, count = rewrite_qdq_to_int8(mod)
    assert count == compute
    text = new["main"].script(show_meta=False)
    assert text.count('out_dtype="int32"') == compute
    # Only biases (1-D, int32 in QDQ) may still be dequantized from a constant: no weight is.
    import re

    for line in text.splitlines():
        if "= R.dequantize(metadata" in line:
            shape = re.search(r"R\.Tensor\(\(([^)]*)\)", line).group(1)
            assert len([d for d in shape.split(",") if d.strip()]) == 1, line


def test_int8_artifact_matches_onnxruntime_within_one_step(qdq_model):
    d, _, q = qdq_model
    art = build(q, BuildConfig(target="cpu"), out=d / "tvm-int8").output
    assert art.history[-1]["config"]["int8"] is True and art.history[-1]["metrics"]["int8_ops"] >= 2
    ort, tvm = load(q), load(art)
    step = output_step(q)
    for seed in range(100, 105):
        x = example_inputs(seed=seed)
        diff = np.max(np.abs(ort.run(x)[0] - tvm.run(x)[0]))
        assert diff <= step * 1.0001, (diff, step)


def test_int8_off_keeps_float_qdq_semantics(qdq_model):
    d, _, q = qdq_model
    art = build(q, BuildConfig(target="cpu", int8=False), out=d / "tvm-qdq-float").output
    assert art.history[-1]["metrics"]["int8_ops"] == 0
    x = example_inputs(seed=7)
    from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    unfused = OnnxRuntimeRunner(q, optimization="basic").run(x)[0]
    assert np.max(np.abs(unfused - load(art).run(x)[0])) <= output_step(q) * 1.0001


def test_targets_presets_and_errors():
    from edgeopt.compile.targets import Toolchain, resolve_target, toolchain
    from edgeopt.core.errors import InputError

    assert resolve_target("arm:cortex-a76")["mattr"] == ["+neon", "+dotprod", "+fullfp16"]
    assert resolve_target("cuda")["arch"] == "sm_90" and resolve_target("cuda:sm_80")["arch"] == "sm_80"
    assert toolchain(resolve_target("arm")).compiler == "aarch64-linux-gnu-g++"
    assert toolchain(resolve_target('{"kind": "llvm"}')).compiler is None
    with pytest.raises(InputError, match="unknown target 'tpu'; expected one of cpu, cpu:generic, arm"):
        resolve_target("tpu")
    with pytest.raises(InputError, match="unknown arm board 'pi9'"):
        resolve_target("arm:pi9")
    with pytest.raises(InputError, match="unknown CUDA arch 'sm_1'"):
        resolve_target("cuda:sm_1")
    with pytest.raises(InputError, match="target JSON .* is malformed"):
        resolve_target('{"kind": ')
    with pytest.raises(InputError, match="install the Debian package g\\+\\+-aarch64-linux-gnu"):
        Toolchain("no-such-aarch64-g++", "g++-aarch64-linux-gnu").check()
