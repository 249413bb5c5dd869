"""The ``cpu`` target is the host as its feature flags describe it, not as its (maybe masked) model
number names it; artifacts record the features they need and refuse a CPU without them."""

import platform

import pytest

from edgeopt.compile import BuildConfig, build, export
from edgeopt.compile.targets import host_cpu_target, isa_features, required_cpu_features, resolve_target
from edgeopt.core.errors import InputError
from edgeopt.runtimes import cpu_features, load
from edgeopt.runtimes.cpu_features import host_flags, llvm_features

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or host_flags() is None,
                                reason="reads an x86-64 Linux host's /proc/cpuinfo")

#: a Sapphire Rapids' instruction-set flags as Linux lists them (a Xeon 8480 under KVM)
SAPPHIRE_RAPIDS = set("""fpu cx8 cmov mmx fxsr sse sse2 lm pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe
popcnt aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch fsgsbase bmi1 avx2 bmi2 invpcid avx512f avx512dq
rdseed adx avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xsaves avx512_bf16
avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid movdiri
movdir64b serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 fsrm waitpkg cldemote avx_vnni
hypervisor constant_tsc""".split())


def test_cpu_preset_features_equal_the_cpus_flags():
    flags = host_flags()
    spec = resolve_target("cpu")
    assert isa_features(spec) == llvm_features(flags)
    assert set(required_cpu_features(spec)) == llvm_features(flags)
    # what TVM's own feature checks see (MetaSchedule's VNNI rule, blocked_layout) follows the flags
    from tvm.target import codegen
    import tvm

    from edgeopt.compile.blocked_layout import has_vnni

    assert has_vnni(spec) == ("avx512_vnni" in flags)
    assert bool(codegen.target_has_features("avx512bf16", tvm.target.Target(spec))) == ("avx512_bf16" in flags)


def test_a_masked_model_name_is_not_trusted(monkeypatch):
    """KVM's model 167 makes LLVM call a Sapphire Rapids ``rocketlake``: the target must still have
    AMX, AVX512-FP16 and BF16, and none of Rocket Lake's 256-bit vector preference."""
    import tvm.target.codegen as codegen

    monkeypatch.setattr(cpu_features, "host_flags", lambda: set(SAPPHIRE_RAPIDS))
    monkeypatch.setattr(codegen, "llvm_get_system_cpu", lambda: "rocketlake")
    spec = host_cpu_target(cores=4)
    assert "mcpu" not in spec
    assert isa_features(spec) == llvm_features(SAPPHIRE_RAPIDS)
    assert {"amx-int8", "amx-bf16", "avx512bf16", "avx512fp16"} <= isa_features(spec)
    import tvm

    assert "prefer-256-bit" not in codegen.llvm_get_cpu_features(tvm.target.Target(spec))


def test_a_name_that_fits_is_kept_and_masked_extras_turned_off(monkeypatch):
    """A Rocket Lake whose VM hides pku: the name stays (its scheduling model), pku goes off."""
    import tvm.target.codegen as codegen

    rocket = {f for f, name in cpu_features.LINUX_TO_LLVM.items()
              if name in isa_features({"kind": "llvm", "mcpu": "rocketlake"})} - {"pku"}
    monkeypatch.setattr(cpu_features, "host_flags", lambda: set(rocket))
    monkeypatch.setattr(codegen, "llvm_get_system_cpu", lambda: "rocketlake")
    spec = host_cpu_target(cores=4)
    assert spec["mcpu"] == "rocketlake" and "-pku" in spec["mattr"]
    assert isa_features(spec) == llvm_features(rocket)


def test_other_x86_cpus_by_name():
    generic = resolve_target("cpu:generic")
    assert "mcpu" not in generic and "mattr" not in generic
    assert "avx2" not in required_cpu_features(generic)
    assert resolve_target("cpu:skylake-avx512")["mcpu"] == "skylake-avx512"
    assert "avx512f" in required_cpu_features(resolve_target("cpu:skylake-avx512"))
    with pytest.raises(InputError, match="unknown CPU 'pentium9'"):
        resolve_target("cpu:pentium9")
    assert required_cpu_features(resolve_target("arm:cortex-a72")) == []
    assert resolve_target("arm:cortex-a76")["mattr"] == ["+neon", "+dotprod", "+fullfp16"]


@pytest.mark.integration
def test_artifact_records_its_features_and_refuses_a_cpu_without_them(tmp_path, monkeypatch, capsys):
    import torch

    from edgeopt.pipeline.cli import main
    from tests.helpers import tiny_conv_net

    x = torch.zeros(1, 1, 8, 8)
    onnx_path = export(tiny_conv_net(), None, x, out=tmp_path / "m.onnx").path
    art = build(onnx_path, BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "cpu").artifact
    assert set(art.manifest["cpu_features"]) == llvm_features(host_flags())
    load(art).run([x.numpy()])  # this CPU has them all
    # the same artifact on a CPU that lacks AVX-512 (faked flags): refused, naming what is missing
    fewer = {f for f in host_flags() if not f.startswith("avx512")}
    monkeypatch.setattr(cpu_features, "host_flags", lambda: fewer)
    with pytest.raises(InputError, match=r"built for a CPU with avx512.*which this CPU lacks"):
        load(art)
    assert main(["bench", str(art.path), "--runtime", "tvm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "avx512f" in err[0] and "Traceback" not in err[0]
    # built for any x86-64, it runs there
    generic = build(onnx_path, BuildConfig(target="cpu:generic", kernels="tvm"), out=tmp_path / "generic").artifact
    load(generic).run([x.numpy()])
