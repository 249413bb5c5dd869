"""What each variant's steps changed, in words: a step as written in a recipe (``format_step``),
one line per step record (``describe_record``), and per variant its steps and changes
(``variant_changes``), for every view of the report.

Example:
    >>> from edgeopt.pipeline.report_steps import describe_record, format_step
    >>> format_step({"prune": {"amount": 0.5}})
    'prune(amount=0.5)'
    >>> describe_record({"name": "prune", "metrics": {"params_before": 1000, "params_after": 500}})
    'prune: params 1.00k -> 500 (-50%)'
"""

from __future__ import annotations

import json

from edgeopt.core.phrases import change, count, size

from .report_schema import FAILED, OK, name_runtime, status
from .steps import STEPS


# -- what each variant's steps changed --------------------------------------------------------

def format_step(step) -> str:
    """``{"prune": {"amount": 0.5}}`` -> ``prune(amount=0.5)``."""
    if isinstance(step, dict) and len(step) == 1:
        (name, params), = step.items()
        if not params:
            return str(name)
        if isinstance(params, dict):
            return f"{name}(" + ", ".join(f"{k}={_short(v)}" for k, v in params.items()) + ")"
        return f"{name}({_short(params)})"
    return _short(step)


def _short(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def describe_record(rec: dict) -> str:
    """One line saying what a step record changed: params, FLOPs and size before -> after, then
    the phrases of the step's own ``describe`` in the registry (channels, ranks, nodes kept in
    float, kernels, ...); a step the registry does not know shows its scalar metrics."""
    name = rec.get("name", "?")
    m = rec.get("metrics") or {}
    parts = []
    if "params_before" in m:
        parts.append(f"params {change(m['params_before'], m.get('params_after'))}")
    if "flops_before" in m:
        parts.append(f"FLOPs {change(m['flops_before'], m.get('flops_after'))}")
    if "size_bytes_before" in m:
        parts.append(f"size {change(m['size_bytes_before'], m.get('size_bytes_after'), size)}")
    if name in STEPS:
        parts += STEPS[name].describe(m, rec.get("config") or {})
    if not parts:  # an unknown step: its scalar metrics
        parts = [f"{k} {_short(v)}" for k, v in m.items() if isinstance(v, (int, float, str, bool))]
    return f"{name}: " + ("; ".join(parts) if parts else "no metrics recorded")


def variant_changes(report: dict) -> list[dict]:
    """Per variant name (in report order): ``{"name", "steps": [str], "changes": [str],
    "runtimes": [str], "failed": bool}``. ``changes`` comes from the entries' step history
    (records shared by several runtimes listed once)."""
    out: dict[str, dict] = {}
    for v in report["variants"]:
        d = out.setdefault(v["name"], {"name": v["name"], "steps": [format_step(s) for s in v.get("steps") or []],
                                       "changes": [], "runtimes": [], "failed": True, "_seen": set()})
        d["runtimes"].append(f"{v['runtime']}" + (" (failed)" if status(v) == FAILED else ""))
        d["failed"] = d["failed"] and status(v) == FAILED
        for rec in v.get("history") or []:
            if not isinstance(rec, dict):
                continue
            key = json.dumps([rec.get("name"), rec.get("config"), rec.get("metrics")], sort_keys=True,
                             default=str)
            if key not in d["_seen"]:
                d["_seen"].add(key)
                d["changes"].append(describe_record(rec))
    ok = [v for v in report["variants"] if status(v) == OK]
    originals = [v for v in ok if not v.get("steps")]
    for d in out.values():
        del d["_seen"]
        mine = [v for v in ok if v["name"] == d["name"]]
        if not mine or not originals or not mine[0].get("steps"):
            continue
        v = mine[0]
        base = next((o for o in originals if o["runtime"] == v["runtime"]), originals[0])
        diff = [f"{what} {change(base.get(key), v.get(key), fmt)}" for what, key, fmt in
                (("params", "params", count), ("FLOPs", "flops", count), ("size", "size_bytes", size))
                if base.get(key) is not None and v.get(key) is not None]
        if diff:
            d["changes"].insert(0, f"against {name_runtime(base)} (no steps): " + "; ".join(diff))
    return list(out.values())
