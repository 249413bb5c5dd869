"""The host CPU's instruction-set features, from its own flags, in LLVM's names (standard library only).

A virtual machine often reports a CPU model number that is not the CPU's (KVM's 167 makes LLVM
name a Rocket Lake whatever runs underneath), so the model name cannot say what the CPU can do;
its feature flags (CPUID, as Linux lists them in ``/proc/cpuinfo``) can. The build side turns
these into the ``cpu`` target's ``mattr`` (``edgeopt.compile.targets``); the load side checks an
artifact's recorded features against them, so a library built for instructions the host lacks is
refused with their names instead of dying on an illegal instruction.

Example:
    >>> from edgeopt.runtimes.cpu_features import llvm_features
    >>> sorted(llvm_features({"sse4_2", "avx512_vnni", "amx_int8", "hypervisor"}))
    ['amx-int8', 'avx512vnni', 'sse4.2']
"""

from __future__ import annotations

from pathlib import Path

#: Linux's name of a CPUID feature flag -> LLVM's name of the x86 feature. Only instruction-set
#: extensions are listed: flags such as ``hypervisor`` or ``constant_tsc`` say nothing about the
#: code a compiler may emit, and LLVM's tuning features (``prefer-256-bit``) are not CPU flags.
LINUX_TO_LLVM = {
    "fpu": "x87", "cx8": "cx8", "cmov": "cmov", "mmx": "mmx", "fxsr": "fxsr", "sse": "sse", "sse2": "sse2",
    "lm": "64bit", "pni": "sse3", "pclmulqdq": "pclmul", "ssse3": "ssse3", "fma": "fma", "cx16": "cx16",
    "sse4_1": "sse4.1", "sse4_2": "sse4.2", "movbe": "movbe", "popcnt": "popcnt", "aes": "aes",
    "xsave": "xsave", "avx": "avx", "f16c": "f16c", "rdrand": "rdrnd", "lahf_lm": "sahf", "abm": "lzcnt",
    "sse4a": "sse4a", "3dnowprefetch": "prfchw", "xop": "xop", "fma4": "fma4", "tbm": "tbm", "lwp": "lwp",
    "fsgsbase": "fsgsbase", "bmi1": "bmi", "avx2": "avx2", "bmi2": "bmi2", "invpcid": "invpcid",
    "avx512f": "avx512f", "avx512dq": "avx512dq", "rdseed": "rdseed", "adx": "adx",
    "avx512ifma": "avx512ifma", "clflushopt": "clflushopt", "clwb": "clwb", "avx512cd": "avx512cd",
    "sha_ni": "sha", "avx512bw": "avx512bw", "avx512vl": "avx512vl", "xsaveopt": "xsaveopt",
    "xsavec": "xsavec", "xsaves": "xsaves", "avx512_bf16": "avx512bf16", "clzero": "clzero",
    "wbnoinvd": "wbnoinvd", "monitorx": "mwaitx", "rdpru": "rdpru", "avx512vbmi": "avx512vbmi",
    "avx512_vbmi2": "avx512vbmi2", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "avx512_vnni": "avx512vnni", "avx512_bitalg": "avx512bitalg", "avx512_vpopcntdq": "avx512vpopcntdq",
    "rdpid": "rdpid", "cldemote": "cldemote", "movdiri": "movdiri", "movdir64b": "movdir64b",
    "enqcmd": "enqcmd", "avx512_vp2intersect": "avx512vp2intersect", "serialize": "serialize",
    "tsxldtrk": "tsxldtrk", "pconfig": "pconfig", "pku": "pku", "waitpkg": "waitpkg", "fsrm": "fsrm",
    "uintr": "uintr", "avx_vnni": "avxvnni", "avx512_fp16": "avx512fp16", "amx_bf16": "amx-bf16",
    "amx_tile": "amx-tile", "amx_int8": "amx-int8", "amx_fp16": "amx-fp16", "amx_complex": "amx-complex",
    "avx_vnni_int8": "avxvnniint8", "avx_ne_convert": "avxneconvert", "avx_ifma": "avxifma",
    "avx_vnni_int16": "avxvnniint16", "cmpccxadd": "cmpccxadd", "sha512": "sha512", "sm3": "sm3",
    "sm4": "sm4",
}
#: every LLVM feature a CPU flag can vouch for: only these are required of a CPU, or checked
FLAGGED = frozenset(LINUX_TO_LLVM.values())
CPUINFO = Path("/proc/cpuinfo")


def host_flags() -> set[str] | None:
    """The feature flags Linux lists for this CPU, or None where there is no ``/proc/cpuinfo``."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def llvm_features(flags: set[str]) -> set[str]:
    """LLVM's names of the instruction-set features among Linux's ``flags``."""
    return {LINUX_TO_LLVM[f] for f in flags if f in LINUX_TO_LLVM}


def host_llvm_features() -> set[str] | None:
    """This CPU's instruction-set features in LLVM's names, or None where its flags are unknown."""
    flags = host_flags()
    return None if flags is None else llvm_features(flags)


def missing_on_host(required) -> list[str]:
    """The features of ``required`` (LLVM names) this CPU lacks; none where its flags are unknown."""
    host = host_llvm_features()
    if host is None:
        return []
    return sorted(f for f in required if f in FLAGGED and f not in host)
