"""TVM target presets and the toolchain each one needs.

TVM 0.27 takes targets as JSON dicts only, and LLVM 22 rejects ``mcpu=native``; the ``cpu``
preset therefore reads the host CPU's feature flags (``edgeopt.runtimes.cpu_features``: a VM's
CPU model number, and so LLVM's name for the CPU, is often wrong) and uses the machine's core count.

Presets:
- ``cpu``: the host (x86-64 here), built with the host compiler for the features its flags list.
- ``cpu:generic`` (any x86-64) and ``cpu:NAME`` (LLVM's name of an x86 CPU, e.g. ``cpu:znver4``):
  other x86 machines.
- ``arm``: aarch64 Linux with NEON (any Armv8-A board); named boards: ``cortex-a72`` (Raspberry
  Pi 4), ``cortex-a76`` (Raspberry Pi 5), ``neoverse-n1`` (Graviton 2, Ampere Altra), each as
  ``arm:NAME``. Cross-compiled with ``aarch64-linux-gnu-g++``.
- ``cuda``: NVIDIA GPUs, ``arch`` sm_90 (H100/H200) by default, ``cuda:sm_80`` and so on for
  others; the host code is built for the host CPU.
- any TVM target as JSON (a string, a ``.json`` file, or a dict).

Example:
    >>> from edgeopt.compile.targets import resolve_target, preset_names
    >>> resolve_target("arm:cortex-a72")["mcpu"]
    'cortex-a72'
    >>> "cuda" in preset_names()
    True
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.errors import InputError, last_line

AARCH64_TRIPLE = "aarch64-linux-gnu"
ARM_BOARDS = {
    "cortex-a72": {"mcpu": "cortex-a72", "mattr": ["+neon"]},
    "cortex-a76": {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
    "neoverse-n1": {"mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod", "+fullfp16"]},
}
CUDA_ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")


def preset_names() -> list[str]:
    return ["cpu", "cpu:generic", "arm", *(f"arm:{b}" for b in ARM_BOARDS), "cuda", *(f"cuda:{a}" for a in CUDA_ARCHS)]


@dataclass(frozen=True)
class Toolchain:
    """How to link an exported library for a target, and what is missing to do so."""

    compiler: str | None      # None: TVM's default (the host compiler)
    package: str | None = None  # the Debian package that provides ``compiler``

    def check(self) -> None:
        if self.compiler and shutil.which(self.compiler) is None:
            raise InputError(f"the cross compiler {self.compiler!r} is not installed; install the "
                             f"Debian package {self.package} (apt-get install {self.package})")


def llvm_known_features() -> set[str]:
    """Every x86 feature this LLVM knows: those of the CPUs it can name (LLVM warns about, and
    ignores, an ``mattr`` entry it does not know)."""
    import tvm
    import tvm.target.codegen as codegen

    known: set[str] = set()
    for name in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"})):
        known |= set(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": name})))
    return known


def isa_features(spec: dict) -> set[str]:
    """The instruction-set features (LLVM names a CPU flag vouches for) an llvm target's code may
    use: its ``mcpu``'s and its ``mattr``'s, as LLVM resolves them."""
    import tvm
    import tvm.target.codegen as codegen

    from edgeopt.runtimes.cpu_features import FLAGGED

    return set(codegen.llvm_get_cpu_features(tvm.target.Target(spec))) & FLAGGED


def host_cpu_target(cores: int | None = None) -> dict:
    """The host CPU as a TVM target dict: its instruction-set features read from its own flags
    (``mattr``), LLVM's name for it only where the name does not understate it, its core count.

    A VM's CPU model number is often not the CPU's (KVM reports 167: LLVM says ``rocketlake``
    for a Sapphire Rapids, which has AMX, AVX512-FP16 and BF16 that Rocket Lake lacks, and
    Rocket Lake's tuning caps vectors at 256 bits). The name is kept for its scheduling model
    when every feature the CPU has is one the named CPU has too; features the name implies and
    the CPU does not show (a VM may mask some) are turned off. Without readable flags (no
    ``/proc/cpuinfo``), LLVM's name alone.
    """
    import tvm.target.codegen as codegen

    from edgeopt.runtimes.cpu_features import host_llvm_features

    target: dict = {"kind": "llvm", "num-cores": int(cores or os.cpu_count() or 1)}
    mcpu = codegen.llvm_get_system_cpu()
    has = host_llvm_features()
    if has is None:
        if mcpu and mcpu != "generic":
            target["mcpu"] = mcpu
        return target
    has &= llvm_known_features()  # an older LLVM may not know a newer CPU's flags
    named = isa_features({"kind": "llvm", "mcpu": mcpu}) if mcpu and mcpu != "generic" else set()
    minus: list[str] = []
    if named and has <= named:
        target["mcpu"] = mcpu
        minus = [f"-{f}" for f in sorted(named - has)]
    # off first: a later "+" re-enables what a "-" took along (LLVM implies features both ways)
    target["mattr"] = minus + [f"+{f}" for f in sorted(has)]
    return target


def other_cpu_target(name: str, cores: int | None = None) -> dict:
    """``cpu:NAME``: another x86 machine, by LLVM's CPU name (``generic``: any x86-64)."""
    import tvm.target.codegen as codegen

    target: dict = {"kind": "llvm", "num-cores": int(cores or os.cpu_count() or 1)}
    if name != "generic":
        triple = codegen.llvm_get_system_triple()
        if not codegen.llvm_is_valid_cpu(name, triple):
            raise InputError(f"unknown CPU {name!r} in target 'cpu:{name}'; expected 'cpu', 'cpu:generic' "
                             f"or LLVM's name of an x86 CPU (e.g. cpu:skylake-avx512, cpu:znver4)")
        target["mcpu"] = name
    return target


def required_cpu_features(spec: dict) -> list[str]:
    """The instruction-set features an artifact built for ``spec`` needs of the CPU that runs it
    (LLVM names; for a CUDA target, its host code's); empty for targets of another architecture."""
    cpu = spec.get("host") if spec.get("kind") == "cuda" else spec
    if not isinstance(cpu, dict) or cpu.get("kind") != "llvm":
        return []
    import tvm.target.codegen as codegen

    triple = cpu.get("mtriple") or codegen.llvm_get_system_triple()
    if not triple.startswith(("x86_64", "i686", "i386")):
        return []
    return sorted(isa_features(cpu))


def arm_target(board: str | None = None) -> dict:
    target = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"]}
    if board is not None:
        if board not in ARM_BOARDS:
            raise InputError(f"unknown arm board {board!r}; expected one of {', '.join(ARM_BOARDS)}")
        target.update(ARM_BOARDS[board])
    return target


def cuda_target(arch: str = "sm_90") -> dict:
    if arch not in CUDA_ARCHS:
        raise InputError(f"unknown CUDA arch {arch!r}; expected one of {', '.join(CUDA_ARCHS)}")
    return {"kind": "cuda", "arch": arch, "host": host_cpu_target()}


#: Target kinds edgeopt builds for and its runtimes load (CPU through LLVM, NVIDIA GPUs).
KINDS = ("llvm", "cuda")


def check_kind(spec: dict) -> None:
    """``InputError`` for a target kind edgeopt does not build for, or one this TVM has no code
    generator for (TVM would fail later with "Cannot find global function target.build...")."""
    import tvm

    kind = spec.get("kind")
    if kind not in KINDS:
        raise InputError(f"target kind {kind!r} is not supported; expected one of {', '.join(KINDS)} "
                         f"(presets: {', '.join(preset_names())})")
    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        raise InputError(f"target kind {kind!r}: this TVM build has no code generator for it")


def resolve_target(target: str | dict | Any) -> dict:
    """A preset name, a JSON string or file, or a dict -> a validated TVM target dict."""
    if isinstance(target, dict):
        spec = dict(target)
    elif isinstance(target, str):
        name, _, variant = target.partition(":")
        if name == "cpu":
            return other_cpu_target(variant) if variant else host_cpu_target()
        if name == "arm":
            return arm_target(variant or None)
        if name == "cuda":
            return cuda_target(variant or "sm_90")
        text = target
        if target.endswith(".json"):
            p = Path(target)
            if not p.is_file():
                raise FileNotFoundError(f"target file {target!r} does not exist")
            text = p.read_text()
        if not text.lstrip().startswith("{"):
            raise InputError(f"unknown target {target!r}; expected one of {', '.join(preset_names())}, "
                             "or a TVM target as JSON (e.g. '{\"kind\": \"llvm\"}')")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"target JSON {target!r} is malformed: {e}") from None
        if not isinstance(spec, dict):
            raise InputError(f"target JSON must be an object, got {type(spec).__name__}")
    else:
        raise InputError(f"target must be a preset name, JSON or dict, got {type(target).__name__}")
    if "kind" not in spec:
        raise InputError(f"target {spec!r} has no 'kind' (e.g. 'llvm', 'cuda')")
    import tvm

    check_kind(spec)

    try:
        tvm.target.Target(spec)
    except Exception as e:
        raise InputError(f"TVM rejects target {spec!r}: {last_line(e)}") from None
    if spec.get("kind") == "llvm" and spec.get("mcpu"):
        # LLVM only warns about an unknown CPU and silently builds for a generic one.
        import tvm.target.codegen as codegen

        triple = spec.get("mtriple") or codegen.llvm_get_system_triple()
        if not codegen.llvm_is_valid_cpu(spec["mcpu"], triple):
            raise InputError(f"TVM rejects target {spec!r}: LLVM does not know mcpu {spec['mcpu']!r} "
                             f"for {triple}")
    return spec


def toolchain(spec: dict) -> Toolchain:
    """The compiler that links libraries for ``spec``."""
    triple = spec.get("mtriple") or (spec.get("host") or {}).get("mtriple") or ""
    if triple.startswith("aarch64"):
        return Toolchain("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
    return Toolchain(None)

