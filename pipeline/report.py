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

from edgeopt.core.files import write_json_atomic
from edgeopt.core.errors import InputError

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


def quality(v: dict) -> float | None:
    """The accuracy axis of the trade-off: top-1 accuracy, or agreement when there are no labels."""
    return v.get("accuracy") if v.get("accuracy") is not None else v.get("agreement")


def make_report(variants: list[dict], machine: dict, task: dict | None, reference: str) -> dict:
    """Fill ``latency_ratio`` and ``pareto`` and return the report.json object."""
    names = [f"{v['name']}/{v['runtime']}" for v in variants]
    if reference not in names:
        raise InputError(f"reference variant {reference!r} is not among {names}")
    ref = variants[names.index(reference)]["latency_ms"]["median"]
    for v in variants:
        v["latency_ratio"] = v["latency_ms"]["median"] / ref
    for v, flag in zip(variants, pareto_flags([(v["latency_ms"]["median"], quality(v))
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


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict, out_dir: str | os.PathLike, plot: bool = False) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir`` (each atomically); with ``plot``, also
    pareto.png and index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    md = out / "report.md"
    _write_text_atomic(md, markdown(report))
    if plot:
        pareto_png(report, out / "pareto.png")
        _write_text_atomic(out / "index.html", index_html(report, "pareto.png"))
    return out / "report.json", md


def pareto_png(report: dict, path: str | os.PathLike) -> Path:
    """Latency (log scale) against accuracy, marker area by model size, the front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in report["variants"] if quality(v) is not None]
    metric = "top-1 accuracy (%)" if any(v.get("accuracy") is not None for v in variants) \
        else "top-1 agreement with fp32 (%)"
    # Points often share an accuracy, so names beside them collide: each point gets a number
    # and the key beside the plot spells it out (sorted by latency, like the table).
    fig, ax = plt.subplots(figsize=(12.5, 5.5), dpi=120)
    fig.subplots_adjust(left=0.07, right=0.62, bottom=0.11, top=0.93)
    sizes = [v.get("size_bytes") or 1 for v in variants]
    biggest = max(sizes) if sizes else 1
    runtimes = sorted({v["runtime"] for v in variants})
    colors = dict(zip(runtimes, plt.cm.tab10.colors))
    by_latency = sorted(range(len(variants)), key=lambda i: variants[i]["latency_ms"]["median"])
    key_lines = []
    for number, i in enumerate(by_latency, 1):
        v, size = variants[i], sizes[i]
        x, y = v["latency_ms"]["median"], quality(v) * 100
        ax.scatter(x, y, s=40 + 600 * size / biggest, color=colors[v["runtime"]], alpha=0.6,
                   edgecolors="black" if v.get("pareto") else "none", linewidths=1.5, zorder=3)
        ax.annotate(str(number), (x, y), ha="center", va="center", fontsize=8, fontweight="bold", zorder=4)
        key_lines.append(f"{number:>2} {'*' if v.get('pareto') else ' '} {v['name']}/{v['runtime']}"
                         f"  {x:.3g} ms  {y:.2f}%")
    fig.text(0.635, 0.93, "\n".join(["   (* = Pareto front)"] + key_lines), va="top", ha="left",
             family="monospace", fontsize=7.5)
    ys = [quality(v) * 100 for v in variants]
    if ys:
        pad = max(0.5, (max(ys) - min(ys)) * 0.15)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
    front = sorted((v["latency_ms"]["median"], quality(v) * 100) for v in variants if v.get("pareto"))
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front", zorder=2)
    for rt in runtimes:
        ax.scatter([], [], color=colors[rt], label=rt)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, median ms (batch 1, {report['machine'].get('threads')} threads, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("edgeopt trade-off: marker area = model size, outlined = Pareto front", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def index_html(report: dict, plot: str) -> str:
    """A self-contained page: the machine, the table sorted by latency, and the plot."""
    import html

    rows = [_row(v) for v in sorted_variants(report)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    task = report.get("task") or {}
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeopt report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}</style></head>
<body><h1>edgeopt report</h1>
<p>{html.escape(str(m.get('cpu')))}, {m.get('threads')} threads; {html.escape(versions)}<br>
task: {html.escape(str(task.get('name', '-')))}; latency ratios against
<code>{html.escape(report['reference'])}</code> measured in the same run; * marks the Pareto front.</p>
<table><tr>{head}</tr>{body}</table>
<p><img src="{html.escape(plot)}" alt="latency against accuracy" style="max-width:100%"></p>
</body></html>
"""
