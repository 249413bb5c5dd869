"""The aarch64 native runner under qemu-aarch64: every zoo model's ARM build against the x86 build.

Needs aarch64-linux-gnu-g++, qemu-aarch64 and the aarch64 TVM runtime (``make test`` installs the
first two and runs ``python -m edgeopt.compile.native_build fetch-aarch64``). Timings under qemu are
emulation and are never reported as ARM latency.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compile.bundle import make_bundle
from edgeopt.pipeline.zoo import ZOO, create
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from edgeopt.compile.native_build import aarch64_tvm_root, runner_binary
from helpers import example_inputs, tiny_conv_net

EM_AARCH64 = 183
pytestmark = pytest.mark.skipif(
    not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64") and shutil.which("cmake")
         and (aarch64_tvm_root() / "tvm" / "lib" / "libtvm_runtime.so").exists()),
    reason="needs aarch64-linux-gnu-g++, qemu-aarch64, cmake and the aarch64 TVM runtime "
           "(make test sets them up)")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_arm_build_matches_x86_under_qemu(tmp_path, name):
    x = np.random.default_rng(0).standard_normal(ZOO[name].input_shape).astype(np.float32)
    onnx_path = export(create(name), ExportConfig(), x, out=tmp_path / "m.onnx").path
    x86 = build(onnx_path, BuildConfig(target="cpu"), out=tmp_path / "cpu").output
    arm = build(onnx_path, BuildConfig(target="arm"), out=tmp_path / "arm").output
    assert arm.model_file.read_bytes()[18] == EM_AARCH64
    runner = load(arm, runtime="native", emulate="qemu", provide_binary=runner_binary)
    got, ref = runner.run(x)[0], load(x86, runtime="tvm").run(x)[0]
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))
    assert "emulated" in runner.benchmark(x, warmup=0, repeat=1).machine


def test_fetch_aarch64_cli_prints_the_fetched_folder():
    # Already fetched (the skip condition), so no download: the path for -DEDGEOPT_TVM_ROOT.
    r = subprocess.run([sys.executable, "-m", "edgeopt.compile.native_build", "fetch-aarch64"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(aarch64_tvm_root()) and not r.stderr


def test_x86_library_given_to_the_aarch64_runner(tmp_path):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    x86 = build(onnx_path, BuildConfig(target="cpu"), out=tmp_path / "cpu").output
    runner = load(x86, runtime="native", arch="aarch64", emulate="qemu", provide_binary=runner_binary)
    with pytest.raises(InputError, match="was built for x86_64; this runner is aarch64"):
        runner.run(example_inputs())


def test_arm_artifact_needs_emulation_here(tmp_path):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    arm = build(onnx_path, BuildConfig(target="arm"), out=tmp_path / "arm").output
    with pytest.raises(InputError, match="emulate='qemu'"):
        load(arm, runtime="native")
    bundle = make_bundle(arm, tmp_path / "bundle")
    for f in ("edgeopt-run", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        assert (bundle / f).read_bytes()[18] == EM_AARCH64, f


class _Mlp(__import__("torch").nn.Module):
    def __init__(self):
        import torch

        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 128), torch.nn.Linear(128, 10)

    def forward(self, x):
        import torch

        return self.b(torch.relu(self.a(x)))


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-objdump") is None, reason="needs aarch64-linux-gnu-objdump")
def test_int8_build_for_a_dotprod_board_uses_sdot_and_matches_x86_under_qemu(tmp_path):
    """On a board with the dot-product extension (arm:cortex-a76: +dotprod) the int8 library's
    matmuls compile to SDOT (LLVM vectorizes the int8 x int8 -> int32 reductions into it); without
    the extension they do not. Its outputs under qemu match the x86 build within one step."""
    import torch

    from edgeopt.compile.int8_rewrite import output_step
    from edgeopt.compress import QuantizeConfig, quantize

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fp32 = export(_Mlp().eval(), ExportConfig(), torch.randn(1, 64), out=tmp_path / "mlp.onnx").path
    q = tmp_path / "mlp-int8.onnx"
    quantize(fp32, QuantizeConfig(), [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(8)], out=q)

    def disassembly(art):
        return subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(art.model_file)],
                              capture_output=True, text=True, check=True).stdout

    dotprod = build(q, BuildConfig(target="arm:cortex-a76"), out=tmp_path / "a76").artifact
    plain = build(q, BuildConfig(target="arm"), out=tmp_path / "arm").artifact
    assert dotprod.history[-1]["metrics"]["int8_ops"] == 2
    assert "\tsdot\t" in disassembly(dotprod)
    assert "\tsdot\t" not in disassembly(plain)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    x86 = build(q, BuildConfig(target="cpu"), out=tmp_path / "x86").artifact
    got = load(dotprod, runtime="native", emulate="qemu", provide_binary=runner_binary).run(x)[0]
    assert np.max(np.abs(got - load(x86).run(x)[0])) <= output_step(q) * 1.001
