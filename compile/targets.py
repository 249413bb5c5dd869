"""TVM target presets.

TVM 0.27 takes targets as JSON dicts only, and LLVM 22 rejects ``mcpu=native``; the ``cpu``
preset therefore asks LLVM for the host CPU's name and uses the machine's core count.

Example:
    >>> from edgeopt.compile.targets import resolve_target
    >>> resolve_target({"kind": "llvm", "mcpu": "x86-64"})["kind"]
    'llvm'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgeopt.runtimes.errors import InputError

PRESETS = ("cpu",)


def host_cpu_target(cores: int | None = None) -> dict:
    """The host CPU as a TVM target dict: LLVM's name for this CPU and its core count."""
    import tvm.target.codegen as codegen

    mcpu = codegen.llvm_get_system_cpu()
    target = {"kind": "llvm", "num-cores": int(cores or os.cpu_count() or 1)}
    if mcpu and mcpu != "generic":
        target["mcpu"] = mcpu
    return target


def resolve_target(target: str | dict | Any) -> dict:
    """A preset name, a JSON string or file, or a dict -> a validated TVM target dict."""
    if isinstance(target, dict):
        spec = dict(target)
    elif isinstance(target, str):
        if target == "cpu":
            return host_cpu_target()
        text = target
        if target.endswith(".json"):
            p = Path(target)
            if not p.is_file():
                raise FileNotFoundError(f"target file {target!r} does not exist")
            text = p.read_text()
        if not text.lstrip().startswith("{"):
            raise InputError(f"unknown target {target!r}; expected one of {', '.join(PRESETS)}, "
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

    try:
        tvm.target.Target(spec)
    except Exception as e:
        raise InputError(f"TVM rejects target {spec!r}: {str(e).strip().splitlines()[-1]}") from None
    return spec
