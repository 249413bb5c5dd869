"""The report: report.json (DESIGN.md schema), report.md, and a terminal table.

Example:
    >>> from edgeopt.pipeline.report import pareto_flags
    >>> pareto_flags([(1.0, 0.9), (2.0, 0.95), (3.0, 0.9)])
    [True, True, False]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from edgeopt.runtimes.artifact import write_json_atomic
from edgeopt.runtimes.errors import InputError

SCHEMA = 1


def pareto_flags(points: Sequence[tuple[float, float | None]]) -> list[bool]:
    """For (latency, accuracy) points, whether each is on the front (lower latency, higher
    accuracy). Points without accuracy compare on latency alone."""
    flags = []
    for i, (lat, acc) in enumerate(points):
        a = acc if acc is not None else 0.0
        dominated = False
        for j, (lat2, acc2) in enumerate(points):
            if i == j:
                continue
            a2 = acc2 if acc2 is not None else 0.0
            if lat2 <= lat and a2 >= a and (lat2 < lat or a2 > a):
                dominated = True
                break
        flags.append(not dominated)
    return flags


def make_report(variants: list[dict], machine: dict, task: dict | None, reference: str) -> dict:
    """Fill ``latency_ratio`` and ``pareto`` and return the report.json object."""
    names = [f"{v['name']}/{v['runtime']}" for v in variants]
    if reference not in names:
        raise InputError(f"reference variant {reference!r} is not among {names}")
    ref = variants[names.index(reference)]["latency_ms"]["median"]
    for v in variants:
        v["latency_ratio"] = v["latency_ms"]["median"] / ref
    for v, flag in zip(variants, pareto_flags([(v["latency_ms"]["median"], v.get("accuracy"))
                                               for v in variants])):
        v["pareto"] = flag
    return {"schema": SCHEMA, "machine": machine, "task": task, "reference": reference,
            "variants": variants}


COLUMNS = ("variant", "runtime", "target", "size", "params", "MFLOPs", "median ms", "p90 ms",
           "vs ref", "accuracy", "agreement", "pareto")


def _row(v: dict) -> list[str]:
    acc = v.get("accuracy")
    agr = v.get("agreement")
    return [v["name"], v["runtime"], v.get("target") or "-", _size(v.get("size_bytes")),
            f"{v.get('params', 0):,}", f"{v.get('flops', 0) / 1e6:.1f}",
            f"{v['latency_ms']['median']:.3f}", f"{v['latency_ms']['p90']:.3f}",
            f"{v['latency_ratio']:.2f}x", "-" if acc is None else f"{acc * 100:.2f}%",
            "-" if agr is None else f"{agr * 100:.2f}%", "*" if v.get("pareto") else ""]


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def sorted_variants(report: dict) -> list[dict]:
    return sorted(report["variants"], key=lambda v: v["latency_ms"]["median"])


def text_table(report: dict) -> str:
    """A fixed-width table, sorted by latency, for the terminal."""
    rows = [list(COLUMNS)] + [_row(v) for v in sorted_variants(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(report: dict) -> str:
    m = report["machine"]
    head = ["# edgeopt report", "",
            f"- machine: {m.get('cpu')}, {m.get('threads')} threads; "
            + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
            f"- reference for latency ratios: `{report['reference']}` (median of the same run)"]
    if report.get("task"):
        head.append(f"- task: {report['task']['name']} ({report['task']['metric']})")
    rows = [_row(v) for v in sorted_variants(report)]
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(head + ["", *table, "", "`*` marks the latency/accuracy Pareto front.", ""])


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    md = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(markdown(report))
    os.replace(tmp, md)
    return out / "report.json", md
