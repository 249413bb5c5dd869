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

from .report_schema import FAILED, OK, name_runtime, status


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


def _count(n) -> str:
    if not isinstance(n, (int, float)):
        return str(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _change(before, after, fmt=_count) -> str:
    if before is None or after is None:
        return "-"
    pct = f" ({(after - before) / before * 100:+.0f}%)" if before else ""
    return f"{fmt(before)} -> {fmt(after)}{pct}"


def _listing(items: list[str], limit: int = 8) -> str:
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def describe_record(rec: dict) -> str:
    """One line saying what a step record changed (params/FLOPs before->after, channels, ranks,
    nodes kept in float, size, ...)."""
    name = rec.get("name", "?")
    m = rec.get("metrics") or {}
    parts = []
    if "params_before" in m:
        parts.append(f"params {_change(m['params_before'], m.get('params_after'))}")
    if "flops_before" in m:
        parts.append(f"FLOPs {_change(m['flops_before'], m.get('flops_after'))}")
    if "size_bytes_before" in m:
        parts.append(f"size {_change(m['size_bytes_before'], m.get('size_bytes_after'), format_size)}")
    if name == "prune":
        groups = m.get("groups") or []
        if groups:
            parts.append("channels " + _listing([
                f"{'+'.join(g.get('layers') or ['?'])} {g.get('channels_before')}->{g.get('channels_after')}"
                for g in groups]))
        if m.get("overall_sparsity") is not None:
            parts.append(f"weight sparsity {m['overall_sparsity'] * 100:.1f}%")
    elif name == "lowrank":
        layers = m.get("layers") or []
        parts.append("ranks " + (_listing([f"{lay.get('layer')} {lay.get('ranks')} of {lay.get('full_ranks')}"
                                            for lay in layers]) or "none factorized"))
        if m.get("skipped"):
            parts.append(f"{len(m['skipped'])} layers left whole")
    elif name == "distill":
        if "epochs_run" in m:
            parts.append(f"{m['epochs_run']} epochs (best {m.get('best_epoch')})")
        if m.get("best_val_top1") is not None:
            parts.append(f"best val top-1 {m['best_val_top1'] * 100:.2f}%")
        elif m.get("best_val") is not None:  # a regression or embedding task: its own metric
            parts.append(f"best val {m.get('val_metric')} {m['best_val']:.4g}")
        if m.get("params") is not None:
            parts.append(f"params {_count(m['params'])}")
    elif name == "quantize":
        if m.get("engine") == "nncf":  # which quantizer made it: the two are compared side by side
            parts.append("quantized by NNCF")
        if "compute_nodes_total" in m:
            parts.append(f"{m.get('compute_nodes_quantized')} of {m['compute_nodes_total']} compute "
                         "nodes quantized" + (" (float: " + ", ".join(f"{op} {n}" for op, n in
                                                                     m["float_ops"].items()) + ")"
                                              if m.get("float_ops") else ""))
        if "nodes_in_float" in m:
            kept = list(m["nodes_in_float"] or [])
            parts.append("kept in float: " + (_listing(kept) if kept else "none"))
        if m.get("costliest_layers"):
            share = m.get("costliest_float_share")
            parts.append("costliest layers (debugger): " + _listing(list(m["costliest_layers"]))
                         + (f" (in float together they remove {share * 100:.0f}% of the output error)"
                            if share is not None else ""))
    elif name == "export":
        if "opset" in m:
            parts.append(f"opset {m['opset']}")
        if m.get("size_bytes") is not None:
            parts.append(f"size {format_size(m['size_bytes'])}")
        parity = m.get("parity") or {}
        if parity.get("max_rel") is not None:
            parts.append(f"parity max rel error {parity['max_rel']:.2g}")
    elif name in ("build", "compile"):  # the API's step is build; its record says compile
        if m.get("kernels"):
            parts.append(f"kernels {m['kernels']}" + (f" ({m['kernels_why']})" if m.get("kernels_why") else ""))
        library = {op: n for op, n in (m.get("library_ops") or {}).items() if n}
        if library:
            parts.append("oneDNN calls: " + ", ".join(f"{op} {n}" for op, n in library.items()))
        if m.get("int8_ops"):
            parts.append(f"{m['int8_ops']} int8 ops")
        if m.get("small_ops_in_tvm"):
            small = m["small_ops_in_tvm"]
            parts.append(f"{len(small) if isinstance(small, (list, dict)) else small} small ops on TVM's kernels")
        for line in [m.get("kernel_fallback"), *(m.get("layout_fallbacks") or [])]:
            if line:
                parts.append(f"fallback: {line}")
        if m.get("tuning") or (rec.get("config") or {}).get("tuned"):
            parts.append("tuned")
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
        diff = [f"{what} {_change(base.get(key), v.get(key), fmt)}" for what, key, fmt in
                (("params", "params", _count), ("FLOPs", "flops", _count), ("size", "size_bytes", format_size))
                if base.get(key) is not None and v.get(key) is not None]
        if diff:
            d["changes"].insert(0, f"against {name_runtime(base)} (no steps): " + "; ".join(diff))
    return list(out.values())



def format_size(n: int | None) -> str:
    """A byte count as the views show it.

    >>> format_size(2048), format_size(None)
    ('2.0 KB', '-')
    """
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
