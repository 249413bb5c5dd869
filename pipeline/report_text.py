"""The report in text: the terminal table (``text_table``), report.md (``markdown``), the summary
lines heading every view, and the evaluation tables beyond top-1.

Example:
    >>> from edgeopt.pipeline.report_schema import make_report
    >>> from edgeopt.pipeline.report_text import text_table
    >>> bad = {"name": "int8", "runtime": "tvm", "target": "cpu", "status": "failed",
    ...        "error": "TVM build failed", "steps": [{"quantize": {}}]}
    >>> ok = {"name": "fp32", "runtime": "onnxruntime", "target": "cpu", "steps": [],
    ...       "latency_ms": {"median": 2.0, "p90": 2.1}, "accuracy": 0.98, "agreement": 1.0}
    >>> r = make_report([ok, bad], {"threads": 1}, None, None, meta={"created": "2026-01-01"})
    >>> text_table(r).splitlines()[-1]
    '  int8/tvm (cpu): TVM build failed'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from edgeopt.core.phrases import size as format_size

from .report_schema import (PERCENT_METRICS, SPREAD_LIMIT, evaluated_variants, failed_variants, fastest_here,
                            format_metric, judged_by, latency_spread, metric_label, name_runtime, noisy_latency,
                            ok_variants, quality, row_label, sorted_variants)
from .report_steps import format_step, variant_changes


# -- text views -------------------------------------------------------------------------------

COLUMNS = ("variant", "runtime", "target", "size", "params", "MFLOPs", "median ms", "p90 ms",
           "vs ref", "accuracy", "agreement", "pareto", "fastest")
TIMED = "timed"  # the extra column when some rows come from an earlier run
WORST_OUTPUT = "worst output"  # before "pareto", when rows carry worst_output
SPREAD = "p10-p90 ms"  # after "p90 ms", when rows kept their rounds: how much each latency moves
NOISY = "!"  # after a spread too wide to trust (report_schema.SPREAD_LIMIT)


def _has_resumed(report: dict) -> bool:
    return any(v.get("resumed") for v in ok_variants(report))


def front_name(report: dict) -> str:
    """What the Pareto front trades: ``latency/accuracy`` or, e.g., ``latency/mse (lower is better)``."""
    return "latency/" + metric_label(*judged_by(report))


def _agreement_label(report: dict) -> str:
    """``agreement`` (top-1, with fp32) or ``cosine to fp32`` when the rows' agreement is the
    cosine similarity of their outputs to fp32's (regression and embedding tasks)."""
    kinds = {v.get("agreement_kind") for v in ok_variants(report) if v.get("agreement") is not None}
    return "cosine to fp32" if kinds == {"cosine"} else "agreement"


def _columns(report: dict) -> tuple:
    metric, higher = judged_by(report)
    cols = tuple(metric_label(metric, higher) if c == "accuracy" else
                 _agreement_label(report) if c == "agreement" else c for c in COLUMNS)
    if _has_worst_output(report):
        at = COLUMNS.index("pareto")
        cols = cols[:at] + (WORST_OUTPUT,) + cols[at:]
    if any(latency_spread(v) for v in ok_variants(report)):
        at = COLUMNS.index("p90 ms") + 1
        cols = cols[:at] + (SPREAD,) + cols[at:]
    return cols + ((TIMED,) if _has_resumed(report) else ())


def _has_worst_output(report: dict) -> bool:
    return any(isinstance(v.get("worst_output"), dict) for v in ok_variants(report))


def worst_output_label(v: dict) -> str:
    """The row's worst output as the table shows it (``scores 0.0% matched``, ``out1 4.2 dB``)."""
    w = v.get("worst_output")
    return str(w.get("label") or w.get("output") or "-") if isinstance(w, dict) else "-"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _spread_cell(v: dict, machine: dict) -> str:
    spread = latency_spread(v)
    if spread is None:
        return "-"
    return f"{spread[0]:.3f}-{spread[1]:.3f}" + (f" {NOISY}" if noisy_latency(v, machine) else "")


def _row(v: dict, resumed_column: bool = False, metric: str = "top1", worst_column: bool = False,
         spread_column: bool = False, machine: dict | None = None) -> list[str]:
    acc = v.get("accuracy") if metric in PERCENT_METRICS else quality(v, metric)
    agr = v.get("agreement")
    flops = v.get("flops")
    ratio = v.get("latency_ratio")
    row = [v["name"], v["runtime"], v.get("target") or "-", format_size(v.get("size_bytes")),
           _num(v.get("params"), ","), "-" if flops is None else f"{flops / 1e6:.1f}",
           f"{v['latency_ms']['median']:.3f}", _num(v["latency_ms"].get("p90"), ".3f"),
           "-" if ratio is None else f"{ratio:.2f}x", format_metric(acc, metric),
           "-" if agr is None else f"{agr:.4f}" if v.get("agreement_kind") == "cosine" else f"{agr * 100:.2f}%",
           "*" if v.get("pareto") else "",
           # the runtime to pick for this variant; "-": slower, or below the quality limit
           "<-" if v.get("fastest") else "-" if v.get("keeps_quality") is False else ""]
    if worst_column:
        row.insert(COLUMNS.index("pareto"), worst_output_label(v))
    if spread_column:  # before "pareto", so inserting it after the worst output moves nothing
        row.insert(COLUMNS.index("p90 ms") + 1, _spread_cell(v, machine or {}))
    if resumed_column:
        row.append("earlier run" if v.get("resumed") else "this run")
    return row




def table_rows(report: dict) -> tuple[tuple, list[list[str]]]:
    """The variants table of every view: its column names and one row of cells per ok variant,
    fastest first."""
    cols = _columns(report)
    metric = judged_by(report)[0]
    machine = report.get("machine") or {}
    return cols, [_row(v, TIMED in cols, metric, WORST_OUTPUT in cols, SPREAD in cols, machine)
                  for v in sorted_variants(report)]


def noise_lines(report: dict) -> list[str]:
    """One line per ok row whose latency is too noisy to trust (``report_schema.noisy_latency``),
    fastest first: the row, its band and the likely cause."""
    machine = report.get("machine") or {}
    return [f"{name_runtime(v)} ({v.get('target') or '-'}): {why}" for v in sorted_variants(report)
            if (why := noisy_latency(v, machine))]


def noise_heading() -> str:
    """The line above ``noise_lines`` in every view."""
    return (f"latency too noisy to trust ({NOISY} in the table: the p10-p90 band of its round medians "
            f"is wider than {SPREAD_LIMIT:.0%} of the median):")


def _failed_line(v: dict) -> str:
    return f"{v['name']}/{v['runtime']} ({v.get('target') or '-'}): {v['error']}"


def text_table(report: dict) -> str:
    """A fixed-width table, sorted by latency, for the terminal; failed variants listed below it."""
    cols, body = table_rows(report)
    rows = [list(cols)] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    noisy = noise_lines(report)
    if noisy:
        lines += ["", noise_heading()] + ["  " + line for line in noisy]
    failed = failed_variants(report)
    if failed:
        lines += ["", f"failed ({len(failed)}, not measured):"] + ["  " + _failed_line(v) for v in failed]
    return "\n".join(lines)


def timing_note(report: dict) -> str:
    """Where the timings come from: one run, or (for resumed rows) an earlier run."""
    ref = report.get("reference")
    if ref is None:
        return "no variant was measured (every variant failed)"
    ok = sorted_variants(report)
    resumed = [name_runtime(v) for v in ok if v.get("resumed")]
    fresh = [name_runtime(v) for v in ok if not v.get("resumed")]
    base = f"latency ratios are against {ref}"
    if not resumed:
        return f"{base}, every row measured in the same run"
    if not fresh:
        return (f"{base}; every row was timed in an earlier run of the same recipe (resumed), "
                "so ratios may compare timings from different runs")
    return (f"{base}; {len(resumed)} of {len(ok)} rows were timed in an earlier run of the same "
            f"recipe (resumed: {', '.join(resumed)}), the others in this run, so ratios between "
            "the two groups compare timings from different runs")


def _machine_line(m: dict) -> str:
    parts = [str(m.get("cpu") or "unknown CPU")]
    if m.get("machine"):
        parts.append(str(m["machine"]))
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    threads = m.get("threads", "?")
    parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    return ", ".join(parts)


def _versions_line(m: dict) -> str:
    versions = ([f"python {m['python']}"] if m.get("python") else []) + \
        [f"{k} {v}" for k, v in (m.get("versions") or {}).items()]
    return ", ".join(versions) or "-"


def summary(report: dict) -> list[tuple[str, str]]:
    """(label, value) pairs heading every view: model, recipe, date, machine, versions, task,
    timing provenance; meta keys beyond these are listed too."""
    meta = report.get("meta") or {}
    m = report.get("machine") or {}
    task = report.get("task") or {}
    items = [("model", str(meta.get("model", "-"))), ("recipe", str(meta.get("recipe", "-"))),
             ("created", str(meta.get("created", "-"))), ("machine", _machine_line(m)),
             ("versions", _versions_line(m))]
    if task:
        metric = task.get("metric")
        if task.get("higher_is_better") is not None and metric not in PERCENT_METRICS:
            metric = metric_label(str(metric), bool(task["higher_is_better"]))
        items.append(("task", f"{task.get('name')} (metric: {metric})"))
    items.append(("timings", timing_note(report)))
    items.append(("fastest here", fastest_here(report)))
    for k, v in meta.items():
        if k not in ("model", "recipe", "created"):
            items.append((str(k), v if isinstance(v, str) else json.dumps(v)))
    return items



# -- markdown ---------------------------------------------------------------------------------

def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


@dataclass(frozen=True)
class Section:
    """A section a caller adds to the report's views (search adds its trials and progress plot):
    ``title`` heads it, ``html`` is its body in index.html (already escaped: it is inserted as
    it is), ``markdown`` its body in report.md (the section is left out of report.md when
    empty), ``anchor`` its id in the page's navigation (from the title when empty).

    >>> Section("Search trials", "<p>12 trials</p>").id
    'search-trials'
    """

    title: str
    html: str
    markdown: str = ""
    anchor: str = ""

    @property
    def id(self) -> str:
        """The section's HTML id: ``anchor``, or the title in lower case with runs of other
        characters made one dash."""
        return self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


def markdown(report: dict, sections: Sequence[Section] = ()) -> str:
    """report.md: the summary, the table, the failed variants, each variant's steps, the
    evaluation beyond top-1, then each of ``sections`` that has a markdown body."""
    meta = report.get("meta") or {}
    title = f"# edgeopt report: {meta['model']}" if meta.get("model") else "# edgeopt report"
    head = [title, ""] + [f"- {k}: {v}" for k, v in summary(report)]
    cols, rows = table_rows(report)
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    lines = head + ["", *table, "", f"`*` marks the {front_name(report)} Pareto front; `<-` the fastest "
                    "runtime of each variant among its rows that keep the quality limit (`-`: below it)."]
    noisy = noise_lines(report)
    if noisy:
        lines += ["", noise_heading().replace(NOISY, f"`{NOISY}`"), ""] + [f"- {_md(line)}" for line in noisy]
    failed = failed_variants(report)
    if failed:
        lines += ["", "## Failed variants", "", "Not measured; left out of the table, the plot and "
                  "the Pareto front.", ""]
        lines += [f"- `{v['name']}/{v['runtime']}` ({v.get('target') or '-'}): {v['error']}"
                  + (f" (steps: {' -> '.join(format_step(s) for s in v['steps'])})" if v.get("steps") else "")
                  for v in failed]
    lines += ["", "## Variants: steps and what they changed", ""]
    for d in variant_changes(report):
        lines.append(f"- **{d['name']}** on {', '.join(d['runtimes'])}: "
                     + (" -> ".join(d["steps"]) or "no steps (the original model)"))
        lines += [f"  - {c}" for c in d["changes"]]
    lines += beyond_markdown(report)
    for s in sections:
        if s.markdown:
            lines += ["", f"## {s.title}", "", s.markdown.rstrip("\n")]
    return "\n".join(lines + [""])


# -- beyond top-1: classes, slices, calibration, robustness, exemplars ------------------------

def _pts(v) -> str:
    return "-" if v is None else f"{v * 100:+.2f} pt"


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _mean(values) -> float | None:
    values = [x for x in values if x is not None]
    return sum(values) / len(values) if values else None


def beyond_tables(report: dict) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """The evaluation tables of every view: ``(anchor, title, header, rows)`` for the summary,
    per-class accuracy, slices, robustness and exemplars (tables without data are left out)."""
    variants = evaluated_variants(report)
    if not variants:
        return []
    tables = []
    rows = []
    for v in variants:
        w = v.get("worst_class") or {}
        rob = v.get("robustness") or {}
        perts = list((rob.get("perturbations") or {}).values())
        inv = v.get("invariance") or {}
        ex = v.get("exemplars") or {}
        fronts = ("mean" if v.get("pareto") else "") + (
            ("+" if v.get("pareto") else "") + "worst class" if v.get("pareto_worst_class") else "")
        rows.append([row_label(v), _pct(v.get("accuracy")),
                     f"{w['name']}: {_pct(w['accuracy'])} ({_pts(w['change'])})" if w else "-",
                     _pct(v.get("worst_class_accuracy")),
                     "-" if v.get("ece") is None else f"{v['ece']:.4f} (fp32 {v['ece_fp32']:.4f})",
                     "-" if not perts else f"{_pct(_mean(p['accuracy'] for p in perts))} "
                     f"(fp32 {_pct(_mean(p['fp32_accuracy'] for p in perts))})",
                     _pct(_mean(inv.values())) if inv else "-",
                     str(ex.get("count", "-")), fronts or "-"])
    tables.append(("beyond", "Beyond top-1", ["variant", "accuracy", "worst class vs fp32 (change)",
                   "lowest class accuracy", "ECE (15 bins)", "accuracy under perturbation, mean",
                   "invariance, mean", "exemplars", "Pareto front on"], rows))
    with_classes = [v for v in variants if v.get("per_class")]
    if with_classes:
        classes = {}
        for v in with_classes:
            for r in v["per_class"]:
                classes.setdefault(r["class"], (r["name"], r["n"], r["fp32_accuracy"]))
        header = ["class", "n", "fp32 (reference)"] + [row_label(v) for v in with_classes]
        body = []
        for c in sorted(classes):
            name, n, ref = classes[c]
            cells = [name, str(n), _pct(ref)]
            for v in with_classes:
                r = next((r for r in v["per_class"] if r["class"] == c), None)
                cells.append("-" if r is None else f"{_pct(r['accuracy'])} ({_pts(r['change'])})")
            body.append(cells)
        tables.append(("classes", "Per-class accuracy (change against fp32)", header, body))
        kinds = []
        for v in with_classes:
            kinds += [k for k in (v.get("slices") or {}) if k not in kinds]
        for kind in kinds:
            names = []
            for v in with_classes:
                names += [s["slice"] for s in (v.get("slices") or {}).get(kind, []) if s["slice"] not in names]
            body = []
            for sname in names:
                first = next(s for v in with_classes for s in (v.get("slices") or {}).get(kind, [])
                             if s["slice"] == sname)
                cells = [sname, str(first["n"]), _pct(first["fp32_accuracy"])]
                for v in with_classes:
                    s = next((s for s in (v.get("slices") or {}).get(kind, []) if s["slice"] == sname), None)
                    cells.append("-" if s is None or s["accuracy"] is None else
                                 f"{_pct(s['accuracy'])} ({_pts(s['accuracy'] - s['fp32_accuracy'])})")
                body.append(cells)
            tables.append((f"slices-{kind}", f"Slice: {kind}", [kind, "n", "fp32 (reference)"]
                           + [row_label(v) for v in with_classes], body))
    robust = [v for v in variants if v.get("robustness")]
    if robust:
        perts = []
        for v in robust:
            perts += [p for p in v["robustness"]["perturbations"] if p not in perts]
        body = []
        for v in robust:
            ps = v["robustness"]["perturbations"]
            cells = [row_label(v), str(v["robustness"]["samples"]), _pct(v["robustness"].get("clean_accuracy"))]
            for p in perts:
                d = ps.get(p)
                cells.append("-" if d is None else
                             f"{_pct(d['accuracy'])} (fp32 {_pct(d['fp32_accuracy'])}); inv {_pct(d['invariance'])}"
                             if d["accuracy"] is not None else f"inv {_pct(d['invariance'])}")
            body.append(cells)
        tables.append(("robustness", "Robustness: accuracy under perturbation (fp32 on the same inputs); "
                       "invariance = agreement with its own clean predictions",
                       ["variant", "samples", "clean"] + perts, body))
    ex = [v for v in variants if v.get("exemplars")]
    if ex:
        body = [[row_label(v), str(v["exemplars"]["count"]),
                 ", ".join(f"{k}: {n}" for k, n in sorted(v["exemplars"]["per_class"].items(),
                                                          key=lambda kv: -kv[1])) or "-",
                 v["exemplars"].get("file") or "-"] for v in ex]
        tables.append(("exemplars", "Compression-identified exemplars (inputs where the variant's "
                       "top-1 differs from fp32's)", ["variant", "count", "per class", "file"], body))
    return tables


def beyond_markdown(report: dict) -> list[str]:
    """The evaluation sections of report.md (links to reliability.png and the thumbnail sheets,
    which sit beside it in the study folder)."""
    tables = beyond_tables(report)
    if not tables:
        return []
    lines = []
    for anchor, title, header, rows in tables:
        lines += ["", f"## {title}", "", "| " + " | ".join(_md(h) for h in header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
        if anchor == "beyond":
            lines += ["", "Worst class: the class with the largest drop against fp32. ECE: expected "
                      "calibration error; reliability diagrams in `reliability.png`."]
    sheets = [(v, v["exemplars"]["thumbnails"]) for v in evaluated_variants(report)
              if (v.get("exemplars") or {}).get("thumbnails")]
    if sheets:
        lines += ["", "### Exemplar thumbnails", ""]
        lines += [f"![{row_label(v)}]({path})" for v, path in sheets]
    return lines

