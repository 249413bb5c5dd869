"""Machine fingerprint attached to every measurement: CPU model, threads, package versions.

Versions are read from installed package metadata, so nothing heavy (torch, TVM) is imported.

Example:
    >>> from edgeopt.runtimes.fingerprint import machine_fingerprint
    >>> fp = machine_fingerprint(threads=2)
    >>> sorted(fp) == ['cores', 'cpu', 'machine', 'python', 'threads', 'versions']
    True
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

PACKAGES = ("edgeopt", "torch", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "numpy")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name.replace("apache-", "")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_fingerprint(threads: int | None = None) -> dict:
    """CPU, core count, threads used for the measurement, Python and package versions."""
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads if threads is not None else os.cpu_count(),
        "python": platform.python_version(),
        "versions": package_versions(),
    }
