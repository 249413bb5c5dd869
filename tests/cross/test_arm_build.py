"""Cross builds for aarch64: the artifact is an aarch64 library with the target in its manifest.

Needs ``aarch64-linux-gnu-g++`` (Debian g++-aarch64-linux-gnu; ``make test`` installs it)."""

import shutil

import pytest

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from helpers import example_inputs, tiny_conv_net

pytestmark = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                reason="aarch64-linux-gnu-g++ missing: apt-get install g++-aarch64-linux-gnu")

EM_AARCH64 = 183


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("target", ["arm", "arm:cortex-a72", "arm:neoverse-n1"])
def test_arm_artifact_is_an_aarch64_library(tmp_path, target):
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    art = build(onnx_path, BuildConfig(target=target), out=tmp_path / "arm").output
    assert _elf_machine(art.model_file) == EM_AARCH64
    assert art.manifest["target"]["mtriple"] == "aarch64-linux-gnu"
    with pytest.raises(InputError, match="was built for aarch64"):
        load(art)


def test_int8_arm_artifact_keeps_int8_ops(tmp_path):
    fp32 = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    q = quantize(fp32, QuantizeConfig(method="minmax"), [example_inputs(seed=s) for s in range(8)],
                 out=tmp_path / "q.onnx").path
    art = build(q, BuildConfig(target="arm"), out=tmp_path / "arm-int8").output
    assert art.history[-1]["metrics"]["int8_ops"] == 2
    assert _elf_machine(art.model_file) == EM_AARCH64
