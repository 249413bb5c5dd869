"""The report: report.json, report.md, a self-contained index.html, pareto.png, a terminal table.

report.json (schema 1; keys marked *optional* are absent from reports written by older runs and
readers must not require them)::

    {
      "schema": 1,
      "meta": {                                # optional
        "model": "zoo:digits_cnn",             # what the recipe's `model:` says
        "recipe": "benchmarks/digits.yaml",    # the recipe file, as the user named it
        "created": "2026-11-27T04:20:00+00:00" # ISO 8601; filled with the current UTC time if absent
        ...                                    # any other JSON value is kept and shown
      },
      "machine": {"cpu", "machine", "cores", "threads", "python", "versions": {package: version}},
      "task": {"name": "digits", "metric": "top1", "higher_is_better": true (optional)} | null,
      "reference": "fp32/onnxruntime" | null,  # name/runtime every latency_ratio divides by;
                                               # null only when every variant failed
      "variants": [entry, ...]
    }

An entry is either *ok* (``"status"`` absent or ``"ok"``)::

    {"name", "runtime", "target", "steps": [{step: params}, ...],
     "latency_ms": {"median", "p90", "min", "n"}, "size_bytes", "params", "flops",
     "accuracy" (null without labels and for tasks not scored by top-1),
     "agreement" (top-1 agreement with fp32; for outputs that are not class scores, the mean
                  cosine similarity of each output to fp32's),
     "agreement_kind" (optional: "top1" or "cosine", which of the two "agreement" is),
     "metric_value" (optional: the task metric, when it is not top-1 accuracy),
     "task_metric" (optional: what the row is judged by, whatever the task:
                    {"name": "mse", "value": 0.0093, "higher_is_better": false}; top-1
                    accuracy for top1 tasks, the metric for mse / mae / cosine tasks; for
                    unlabelled ones the worst output's agreement with fp32 by its kind, with
                    "output" naming it. The Pareto front, the table and the plot use it),
     "output_quality" (optional: one row per model output, and per slice a task declares, compared
                       with fp32's same output by its kind (edgeopt.pipeline.output_quality):
                       {"output", "kind", "figure": "top1"|"matched"|"identical"|"snr_db",
                        "value", "normalized" (a share in [0, 1]), "label", "snr_db", "cosine"}),
     "worst_output" (optional: the output_quality row with the lowest "normalized"; the table's
                     "worst output" column shows its label, e.g. "scores 0.0% matched"),
     "history" (optional: the artifact's step records, each {"name", "config", "metrics"}),
     # optional, classifiers with the recipe's `evaluate` on (edgeopt.pipeline.evaluate):
     "per_class": [{"class", "name", "n", "accuracy", "fp32_accuracy", "change"}, ...],
     "worst_class": {"class", "name", "n", "accuracy", "fp32_accuracy", "change"},  # largest drop
     "worst_class_accuracy",                  # the lowest per-class accuracy
     "slices": {"brightness"|"contrast"|"group": [{"slice", "n", "accuracy", "fp32_accuracy"}]},
     "ece", "ece_fp32", "calibration": {"bins", "confidence": [..], "accuracy": [..], "count": [..]},
     "robustness": {"samples", "seed", "clean_accuracy", "fp32_clean_accuracy", "perturbations":
                    {kind: {"accuracy", "fp32_accuracy", "agreement", "invariance", "fp32_invariance"}}},
     "invariance": {kind: fraction},          # agreement with its own clean predictions
     "exemplars": {"count", "per_class": {class: n}, "file": "exemplars/<v>.npz" | null,
                   "thumbnails": "exemplars/<v>.png" | null},   # paths relative to the study folder
     "pareto_worst_class",                    # filled in by make_report: the front on worst class
     "resumed" (optional: true when it was timed in an earlier run of the same recipe),
     "latency_ratio", "pareto",               # these two are filled in by make_report
     "keeps_quality", "fastest"}              # and these (optional in older reports): the row keeps
                                              # the quality limit (QUALITY_LIMIT), and is the fastest
                                              # such row of its variant (name): the runtime to pick

or *failed*, with no measurements, no ``latency_ratio`` and no ``pareto``::

    {"name", "runtime", "target", "status": "failed", "error": "<one line reason>", "steps": [...]}

Failed entries are kept in report.json, listed with their reason in a "failed" section of every
view, and left out of the Pareto front and of the choice of the latency reference.

Example:
    >>> from edgeopt.pipeline.report import make_report, pareto_flags, text_table
    >>> pareto_flags([(1.0, 0.9), (2.0, 0.95), (3.0, 0.9)])
    [True, True, False]
    >>> ok = {"name": "fp32", "runtime": "onnxruntime", "target": "cpu", "steps": [],
    ...       "latency_ms": {"median": 2.0, "p90": 2.1}, "accuracy": 0.98, "agreement": 1.0}
    >>> bad = {"name": "int8", "runtime": "tvm", "target": "cpu", "status": "failed",
    ...        "error": "TVM build failed", "steps": [{"quantize": {}}]}
    >>> r = make_report([ok, bad], {"threads": 1}, None, None, meta={"created": "2026-01-01"})
    >>> r["reference"], r["variants"][0]["pareto"], "pareto" in r["variants"][1]
    ('fp32/onnxruntime', True, False)
    >>> text_table(r).splitlines()[-1]
    '  int8/tvm (cpu): TVM build failed'
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from edgeopt.core.errors import InputError
from edgeopt.core.files import write_bytes_atomic, write_json_atomic, write_text_atomic

SCHEMA = 1
OK, FAILED = "ok", "failed"
DEFAULT_REFERENCE = "fp32/onnxruntime"


# -- entries ---------------------------------------------------------------------------------

def status(v: dict) -> str:
    """``"ok"`` or ``"failed"``; an entry without ``status`` is ok."""
    s = v.get("status", OK)
    if s not in (OK, FAILED):
        raise InputError(f"variant {_label(v)!r}: status must be 'ok' or 'failed', got {s!r}")
    return s


def ok_variants(report: dict) -> list[dict]:
    return [v for v in report["variants"] if status(v) == OK]


def failed_variants(report: dict) -> list[dict]:
    return [v for v in report["variants"] if status(v) == FAILED]


def _label(v: dict) -> str:
    return f"{v.get('name')}/{v.get('runtime')}"


def one_line(text) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(text).split())


def _check_entry(v) -> dict:
    if not isinstance(v, dict) or not v.get("name") or not v.get("runtime"):
        raise InputError(f"a report entry needs 'name' and 'runtime', got {v!r:.200}")
    v = dict(v)
    if status(v) == FAILED:
        if not one_line(v.get("error") or ""):
            raise InputError(f"failed variant {_label(v)!r} has no 'error' reason")
        v["error"] = one_line(v["error"])
        v.setdefault("steps", [])
        return v
    lat = v.get("latency_ms")
    if not isinstance(lat, dict) or not isinstance(lat.get("median"), (int, float)) or lat["median"] <= 0:
        raise InputError(f"variant {_label(v)!r} has no positive latency_ms.median; an entry "
                         "without measurements must say \"status\": \"failed\" and give an 'error'")
    return v


def choose_reference(variants: list[dict], preferred: str = DEFAULT_REFERENCE) -> str | None:
    """The latency reference: ``preferred`` if that variant is ok, else the first ok variant
    (``None`` when every variant failed)."""
    ok = [_label(v) for v in variants if status(v) == OK]
    if preferred in ok:
        return preferred
    return ok[0] if ok else None


def pareto_flags(points: Sequence[tuple[float, float | None]]) -> list[bool]:
    """For (latency, quality) points, whether each is on the front (lower latency, higher
    quality; a lower-is-better metric is passed negated). Points without quality compare on
    latency alone."""
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


# The metrics shown as percentages (fractions of samples); any other metric is shown as it is.
PERCENT_METRICS = ("top1", "agreement")


def judged_by(report: dict) -> tuple[str, bool]:
    """The metric the rows of ``report`` are judged by and whether higher is better.

    The rows' own ``task_metric``; for reports written before it, the task's metric when the
    rows carry ``metric_value``, else top-1 accuracy when they carry one, else agreement.
    """
    ok = [v for v in report.get("variants") or [] if status(v) == OK]
    for v in ok:
        tm = v.get("task_metric")
        if isinstance(tm, dict) and tm.get("name") and tm.get("higher_is_better") is not None:
            return str(tm["name"]), bool(tm["higher_is_better"])
    task = report.get("task") or {}
    if task.get("metric") not in (None, *PERCENT_METRICS) and any(v.get("metric_value") is not None for v in ok):
        from .tasks import METRICS

        higher = task.get("higher_is_better")
        return task["metric"], bool(METRICS.get(task["metric"], True) if higher is None else higher)
    if any(v.get("accuracy") is not None for v in ok):
        return "top1", True
    return "agreement", True


def quality(v: dict, metric: str = "top1") -> float | None:
    """The quality axis of the trade-off for a row judged by ``metric`` (``judged_by``): its
    task metric's value (top-1 accuracy, mse, ...), or agreement with fp32 when it has none."""
    tm = v.get("task_metric")
    if metric not in PERCENT_METRICS:
        if isinstance(tm, dict) and tm.get("name") == metric and tm.get("value") is not None:
            return tm["value"]
        return v.get("metric_value")
    if metric == "agreement" and v.get("accuracy") is None and isinstance(tm, dict) \
            and tm.get("name") == "agreement" and tm.get("value") is not None:
        return tm["value"]  # unlabelled: the worst output's agreement, not only the first output's
    return v.get("accuracy") if v.get("accuracy") is not None else v.get("agreement")


def metric_label(metric: str, higher: bool) -> str:
    """How views name a metric: ``accuracy`` for top-1 (and for unlabelled reports, whose
    accuracy is empty), else the metric with its direction, e.g. ``mse (lower is better)``."""
    if metric in PERCENT_METRICS:
        return "accuracy"
    return f"{metric} ({'higher' if higher else 'lower'} is better)"


def format_metric(value: float | None, metric: str) -> str:
    """A metric value as the views show it: a percentage for top-1 and agreement, else 4
    significant digits."""
    if value is None:
        return "-"
    return f"{value * 100:.2f}%" if metric in PERCENT_METRICS else f"{value:.4g}"


def _check_meta(meta) -> dict:
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise InputError(f"report meta must be a dict, got {type(meta).__name__}")
    meta = dict(meta)
    created = meta.get("created")
    if created is None:
        meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    else:
        try:
            datetime.fromisoformat(str(created))
        except ValueError:
            raise InputError(f"report meta 'created' must be an ISO 8601 date, got {created!r}") from None
    try:
        json.dumps(meta)
    except TypeError as e:
        raise InputError(f"report meta must be JSON-serializable: {e}") from None
    return meta


def make_report(variants: list[dict], machine: dict, task: dict | None, reference: str | None,
                meta: dict | None = None) -> dict:
    """The report.json object: the entries (copied) with ``latency_ratio`` and ``pareto`` filled
    in for the ok ones.

    ``reference`` (``name/runtime``) must be an ok variant; ``None`` picks ``fp32/onnxruntime`` if
    it is ok, else the first ok variant. ``meta`` (model, recipe, created, ...) is kept as
    ``report["meta"]``; ``created`` defaults to now (UTC).
    """
    entries = [_check_entry(v) for v in variants]
    ok = [v for v in entries if status(v) == OK]
    names = [_label(v) for v in ok]
    if reference is None:
        reference = choose_reference(entries)
    elif reference not in names:
        failed = [_label(v) for v in entries if status(v) == FAILED]
        why = " (it failed)" if reference in failed else ""
        raise InputError(f"reference variant {reference!r}{why} is not among the ok variants {names}")
    if ok:
        ref = ok[names.index(reference)]["latency_ms"]["median"]
        for v in ok:
            v["latency_ratio"] = v["latency_ms"]["median"] / ref
        # the front is on the task's metric in its direction (lower mse is better)
        metric, higher = judged_by({"task": task, "variants": ok})
        sign = 1.0 if higher else -1.0
        points = []
        for v in ok:
            q = quality(v, metric)
            points.append((v["latency_ms"]["median"], None if q is None else sign * q))
        for v, flag in zip(ok, pareto_flags(points)):
            v["pareto"] = flag
        mark_fastest(ok, ok[names.index(reference)], metric, higher)
        worst = [v for v in ok if v.get("worst_class_accuracy") is not None]
        if worst:  # the same front, with each variant's weakest class as its accuracy
            for v, flag in zip(worst, pareto_flags([(v["latency_ms"]["median"], v["worst_class_accuracy"])
                                                    for v in worst])):
                v["pareto_worst_class"] = flag
    return {"schema": SCHEMA, "meta": _check_meta(meta), "machine": machine or {}, "task": task,
            "reference": reference, "variants": entries}


# -- which runtime: the fastest per variant that keeps the quality limit -----------------------

#: The quality a row must keep to count as a choice for its variant, against the reference row
#: (fp32 on onnxruntime): the CI gate's default limits (``edgeopt.pipeline.gate``), so that the
#: runtime the report recommends is one ``edgeopt check`` would pass. Top-1 accuracy and
#: agreement: at most 0.005 (half a point) below (``max_accuracy_drop``, ``DEFAULT_AGREEMENT_DROP``);
#: error metrics (lower is better): at most 5% above (``DEFAULT_METRIC_RISE``); other metrics:
#: at most 0.005 below, in their units (``DEFAULT_METRIC_DROP``).
QUALITY_LIMIT = {"points": 0.005, "relative_rise": 0.05, "drop": 0.005}


def quality_limit(reference_value: float, metric: str, higher: bool) -> float:
    """The worst value of ``metric`` a row may have and still keep the quality limit."""
    if metric in PERCENT_METRICS:
        return reference_value - QUALITY_LIMIT["points"]
    if not higher:
        return reference_value + abs(reference_value) * QUALITY_LIMIT["relative_rise"]
    return reference_value - QUALITY_LIMIT["drop"]


def mark_fastest(ok: list[dict], reference: dict, metric: str, higher: bool) -> None:
    """Set ``keeps_quality`` and ``fastest`` on the ok rows: per variant name, the fastest row
    (median latency) among those that keep the quality limit against ``reference``. A row
    without a quality value, or a report whose reference has none, keeps nothing: no runtime is
    recommended on latency alone."""
    ref = quality(reference, metric)
    limit = None if ref is None else quality_limit(ref, metric, higher)
    for v in ok:
        q = quality(v, metric)
        # None: not judged (no quality value on this row or on the reference)
        v["keeps_quality"] = (None if limit is None or q is None
                              else bool(q >= limit - 1e-12 if higher else q <= limit + 1e-12))
        v["fastest"] = False
    for name in dict.fromkeys(v["name"] for v in ok):
        kept = [v for v in ok if v["name"] == name and v["keeps_quality"] is True]
        if kept:
            min(kept, key=lambda v: v["latency_ms"]["median"])["fastest"] = True


def fastest_here(report: dict) -> str:
    """The summary line's value: the fastest row of all that keep the quality limit, e.g.
    ``int8 on openvino (0.42x onnxruntime fp32)``, and the limit it kept."""
    ref = report.get("reference")
    if ref is None:
        return "no variant was measured"
    metric, higher = judged_by(report)
    ref_name, ref_runtime = ref.split("/", 1)
    ref_row = next((v for v in ok_variants(report) if _label(v) == ref), None)
    ref_q = None if ref_row is None else quality(ref_row, metric)
    if ref_q is None:
        return f"not judged: {ref} has no {metric_label(metric, higher)} to hold the others to"
    bound = quality_limit(ref_q, metric, higher)
    limit = (f"{metric if metric in PERCENT_METRICS else metric_label(metric, higher)} "
             f"{'>=' if higher else '<='} {format_metric(bound, metric)}, the CI gate's default limit "
             f"against {ref_runtime} {ref_name}")
    marked = [v for v in ok_variants(report) if v.get("fastest")]
    if not marked:
        return f"no row keeps the quality limit ({limit})"
    best = min(marked, key=lambda v: v["latency_ms"]["median"])
    ratio = best.get("latency_ratio")
    return (f"{best['name']} on {best['runtime']}"
            + (f" ({ratio:.2f}x {ref_runtime} {ref_name})" if ratio is not None else "")
            + f"; quality limit: {limit}")


# -- text views -------------------------------------------------------------------------------

COLUMNS = ("variant", "runtime", "target", "size", "params", "MFLOPs", "median ms", "p90 ms",
           "vs ref", "accuracy", "agreement", "pareto", "fastest")
TIMED = "timed"  # the extra column when some rows come from an earlier run
WORST_OUTPUT = "worst output"  # before "pareto", when rows carry worst_output


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
    return cols + ((TIMED,) if _has_resumed(report) else ())


def _has_worst_output(report: dict) -> bool:
    return any(isinstance(v.get("worst_output"), dict) for v in ok_variants(report))


def worst_output_label(v: dict) -> str:
    """The row's worst output as the table shows it (``scores 0.0% matched``, ``out1 4.2 dB``)."""
    w = v.get("worst_output")
    return str(w.get("label") or w.get("output") or "-") if isinstance(w, dict) else "-"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _row(v: dict, resumed_column: bool = False, metric: str = "top1", worst_column: bool = False) -> list[str]:
    acc = v.get("accuracy") if metric in PERCENT_METRICS else quality(v, metric)
    agr = v.get("agreement")
    flops = v.get("flops")
    ratio = v.get("latency_ratio")
    row = [v["name"], v["runtime"], v.get("target") or "-", _size(v.get("size_bytes")),
           _num(v.get("params"), ","), "-" if flops is None else f"{flops / 1e6:.1f}",
           f"{v['latency_ms']['median']:.3f}", _num(v["latency_ms"].get("p90"), ".3f"),
           "-" if ratio is None else f"{ratio:.2f}x", format_metric(acc, metric),
           "-" if agr is None else f"{agr:.4f}" if v.get("agreement_kind") == "cosine" else f"{agr * 100:.2f}%",
           "*" if v.get("pareto") else "",
           # the runtime to pick for this variant; "-": slower, or below the quality limit
           "<-" if v.get("fastest") else "-" if v.get("keeps_quality") is False else ""]
    if worst_column:
        row.insert(COLUMNS.index("pareto"), worst_output_label(v))
    if resumed_column:
        row.append("earlier run" if v.get("resumed") else "this run")
    return row


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def sorted_variants(report: dict) -> list[dict]:
    """The ok variants, fastest first."""
    return sorted(ok_variants(report), key=lambda v: v["latency_ms"]["median"])


def _rows(report: dict) -> tuple[tuple, list[list[str]]]:
    cols = _columns(report)
    metric = judged_by(report)[0]
    return cols, [_row(v, TIMED in cols, metric, WORST_OUTPUT in cols) for v in sorted_variants(report)]


def _failed_line(v: dict) -> str:
    return f"{v['name']}/{v['runtime']} ({v.get('target') or '-'}): {v['error']}"


def text_table(report: dict) -> str:
    """A fixed-width table, sorted by latency, for the terminal; failed variants listed below it."""
    cols, body = _rows(report)
    rows = [list(cols)] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
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
    resumed = [_label(v) for v in ok if v.get("resumed")]
    fresh = [_label(v) for v in ok if not v.get("resumed")]
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
        parts.append(f"size {_change(m['size_bytes_before'], m.get('size_bytes_after'), _size)}")
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
            parts.append(f"size {_size(m['size_bytes'])}")
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
                (("params", "params", _count), ("FLOPs", "flops", _count), ("size", "size_bytes", _size))
                if base.get(key) is not None and v.get(key) is not None]
        if diff:
            d["changes"].insert(0, f"against {_label(base)} (no steps): " + "; ".join(diff))
    return list(out.values())


# -- markdown ---------------------------------------------------------------------------------

def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(report: dict) -> str:
    """report.md: the summary, the table, the failed variants and each variant's steps."""
    meta = report.get("meta") or {}
    title = f"# edgeopt report: {meta['model']}" if meta.get("model") else "# edgeopt report"
    head = [title, ""] + [f"- {k}: {v}" for k, v in summary(report)]
    cols, rows = _rows(report)
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    lines = head + ["", *table, "", f"`*` marks the {front_name(report)} Pareto front; `<-` the fastest "
                    "runtime of each variant among its rows that keep the quality limit (`-`: below it)."]
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
    return "\n".join(lines + [""])


# -- the plot ---------------------------------------------------------------------------------

def _number_label(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    runs, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            runs.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(runs)


def _overlaps(a, b, margin: float = 2.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _place_labels(ax, renderer, points_px, labels, obstacles, fontsize):
    """Greedy placement: each label at the first spot (on its point, then on rings around it)
    whose box overlaps no placed label, no obstacle box and (if possible) no other point, inside
    the axes. Returns the (dx, dy) pixel offset of each label."""
    from matplotlib.text import Text

    frame = ax.get_window_extent(renderer)
    frame = (frame.x0, frame.y0, frame.x1, frame.y1)
    sizes = []
    for text in labels:
        t = Text(0, 0, text, fontsize=fontsize, fontweight="bold", figure=ax.figure)
        bb = t.get_window_extent(renderer)
        sizes.append((bb.width + 4, bb.height + 4))  # + the white box's padding
    candidates = [(0.0, 0.0)]
    for radius in (16, 26, 38, 52, 68, 86, 106, 130, 160, 200):
        steps = max(12, int(2 * math.pi * radius / 14))
        candidates += [(radius * math.cos(2 * math.pi * k / steps), radius * math.sin(2 * math.pi * k / steps))
                       for k in range(steps)]
    dots = [(x - 3, y - 3, x + 3, y + 3) for x, y in points_px]
    placed: list[tuple] = []
    offsets = []
    for i, ((x, y), (w, h)) in enumerate(zip(points_px, sizes)):
        choice = None
        for avoid_dots in (True, False):
            for dx, dy in candidates:
                box = (x + dx - w / 2, y + dy - h / 2, x + dx + w / 2, y + dy + h / 2)
                if box[0] < frame[0] or box[2] > frame[2] or box[1] < frame[1] or box[3] > frame[3]:
                    continue
                if any(_overlaps(box, b) for b in placed + obstacles):
                    continue
                if avoid_dots and any(_overlaps(box, d, 0) for j, d in enumerate(dots) if j != i):
                    continue
                choice = (dx, dy, box)
                break
            if choice:
                break
        if choice is None:  # no free spot in the axes: stack the label above the others
            top = max([b[3] for b in placed + obstacles] + [y])
            choice = (0.0, top + 4 + h / 2 - y, (x - w / 2, top + 4, x + w / 2, top + 4 + h))
        placed.append(choice[2])
        offsets.append(choice[:2])
    return offsets


#: The colour of the plot's labels for each variant's fastest runtime within the quality limit.
FASTEST_COLOR = "tab:green"


def pareto_figure(report: dict):
    """The trade-off figure: latency (log scale) against accuracy, marker area by model size,
    the front drawn, each point (or group of coinciding points) numbered with a label that
    overlaps no other label, and a key beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged, higher = judged_by(report)
    variants = [v for v in sorted_variants(report) if quality(v, judged) is not None]
    unplotted = [v for v in sorted_variants(report) if quality(v, judged) is None]
    percent = judged in PERCENT_METRICS
    if not percent:
        metric = metric_label(judged, higher)
    elif any(v.get("accuracy") is not None for v in variants):
        metric = "top-1 accuracy (%)"
    elif any(isinstance(v.get("worst_output"), dict) for v in variants):
        metric = "agreement with fp32, worst output (%)"  # unlabelled: by each output's kind
    else:
        metric = "top-1 agreement with fp32 (%)"
    failed = failed_variants(report)
    worst = any("pareto_worst_class" in v for v in variants)
    key_lines = ["    (* = Pareto front; f = fastest of its variant within the quality limit"
                 + ("; w = front on worst-class accuracy)" if worst else ")")]
    width = max([len(_label(v)) for v in variants] + [0])
    for number, v in enumerate(variants, 1):
        marks = (("*" if v.get("pareto") else " ") + ("f" if v.get("fastest") else " ")
                 + (("w" if v.get("pareto_worst_class") else " ") if worst else ""))
        lowest = (f"  worst class {v['worst_class_accuracy'] * 100:6.2f}%"
                  if v.get("worst_class_accuracy") is not None else "")
        key_lines.append(f"{number:>3} {marks} {_label(v):<{width}}"
                         f"  {v['latency_ms']['median']:>8.4g} ms  "
                         + (f"{quality(v, judged) * 100:6.2f}%" if percent
                            else f"{judged} {format_metric(quality(v, judged), judged)}") + lowest)
    if unplotted or failed:
        key_lines.append("")
        key_lines += [f" not plotted: {_label(v)} (no {'accuracy' if percent else judged})" for v in unplotted]
        key_lines += [f" not plotted: {_label(v)} (failed)" for v in failed]
    key_font = 7.5
    height = max(5.5, 1.2 + len(key_lines) * key_font * 1.3 / 72)
    fig, ax = plt.subplots(figsize=(12.5, height), dpi=120)
    top = 1 - 0.4 / height
    fig.subplots_adjust(left=0.07, right=0.62, bottom=0.6 / height, top=top)
    fig.text(0.635, top, "\n".join(key_lines), va="top", ha="left", family="monospace",
             fontsize=key_font)
    ax.set_xscale("log")
    threads = (report.get("machine") or {}).get("threads")
    ax.set_xlabel(f"latency, median ms (batch 1, {threads} threads, log scale)")
    ax.set_ylabel(metric)
    ax.set_title("edgeopt trade-off: marker area = model size, outlined = Pareto front", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if not variants:
        ax.text(0.5, 0.5, "no measured variant to plot", transform=ax.transAxes, ha="center")
        return fig

    xs = [v["latency_ms"]["median"] for v in variants]
    ys = [quality(v, judged) * (100 if percent else 1) for v in variants]
    lo, hi = min(xs), max(xs)
    span = max(math.log10(hi / lo), 0.2)
    ax.set_xlim(lo / 10 ** (span * 0.15), hi * 10 ** (span * 0.15))
    # percentages: at least half a point around the points; other metrics: 15% of their range
    # (or of their size, when every row has the same value)
    floor = 0.5 if percent else 0.05 * max(abs(y) for y in ys) or 1e-6
    pad = max(floor, (max(ys) - min(ys)) * 0.15)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    if not higher:  # better is up on every plot: lower-is-better metrics grow downwards
        ax.invert_yaxis()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda x, _: f"{x:g}")
    # labels at 1, 2 and 5 of each decade: decades alone left two labelled ticks on a plot
    # whose points sat between them
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    if not percent:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.4g}"))
    ax.xaxis.set_minor_formatter(plain if span < 1.2 else NullFormatter())
    sizes = [v.get("size_bytes") or 1 for v in variants]
    biggest = max(sizes)
    runtimes = sorted({v["runtime"] for v in variants})
    colors = dict(zip(runtimes, plt.cm.tab10.colors))
    for v, x, y, size in zip(variants, xs, ys, sizes):
        ax.scatter(x, y, s=40 + 600 * size / biggest, color=colors.get(v["runtime"], "gray"), alpha=0.6,
                   edgecolors="black" if v.get("pareto") else "none", linewidths=1.5, zorder=3)
    front = sorted((x, y) for v, x, y in zip(variants, xs, ys) if v.get("pareto"))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front",
                zorder=2)
    for rt in runtimes:
        ax.scatter([], [], color=colors[rt], label=rt)
    if any(v.get("fastest") for v in variants):
        ax.scatter([], [], marker="s", facecolor="white", edgecolor=FASTEST_COLOR,
                   label="fastest of its variant (f)")
    legend = ax.legend(loc="lower right", fontsize=8)

    # Points often coincide (same accuracy, near-equal latency): points closer than a few
    # pixels share one label ("3-5"), and every label is placed where it overlaps no other.
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = ax.transData.transform(list(zip(xs, ys)))
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(px):
        for g in groups:
            gx, gy = px[g[0]]
            if abs(x - gx) < 8 and abs(y - gy) < 8:
                g.append(i)
                break
        else:
            groups.append([i])
    centers = [tuple(px[g[0]]) for g in groups]
    labels = [_number_label([i + 1 for i in g]) for g in groups]
    lb = legend.get_window_extent(renderer)
    offsets = _place_labels(ax, renderer, centers, labels, [(lb.x0, lb.y0, lb.x1, lb.y1)], fontsize=8)
    for g, text, (dx, dy) in zip(groups, labels, offsets):
        arrow = dict(arrowstyle="-", color="0.3", linewidth=0.7) if (dx or dy) else None
        # the label of a variant's fastest runtime within the quality limit ("f" in the key) is
        # drawn in FASTEST_COLOR, boxed
        fastest = any(variants[i].get("fastest") for i in g)
        box = (dict(boxstyle="round,pad=0.15", fc="white", ec=FASTEST_COLOR, lw=1.2, alpha=0.9) if fastest
               else dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8) if (dx or dy) else None)
        ax.annotate(text, (xs[g[0]], ys[g[0]]), xytext=(dx, dy), textcoords="offset pixels", ha="center",
                    va="center", fontsize=8, fontweight="bold", zorder=5, arrowprops=arrow, bbox=box,
                    color=FASTEST_COLOR if fastest else "black", gid="pareto-label")
    return fig


def pareto_png_bytes(report: dict) -> bytes:
    """The trade-off plot (``pareto_figure``) as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(report)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return buf.getvalue()


def pareto_png(report: dict, path: str | os.PathLike) -> Path:
    """Write the trade-off plot to ``path`` (atomically)."""
    write_bytes_atomic(path, pareto_png_bytes(report))
    return Path(path)


# -- the page ---------------------------------------------------------------------------------

def index_html(report: dict, plot: bytes | str | os.PathLike | None = None,
               base_dir: str | os.PathLike | None = None) -> str:
    """A page that stands alone (no external file or URL): summary, table, the plot embedded as
    a PNG data URI, failed variants, and each variant's steps and what they changed.

    ``plot``: PNG bytes, or a PNG file to embed; ``None`` renders it (``pareto_png_bytes``).
    ``base_dir``: the study folder, where the exemplar thumbnail sheets named by the entries are
    read from (to embed them too).
    """
    e = html.escape
    if plot is None:
        png = pareto_png_bytes(report)
    elif isinstance(plot, bytes):
        png = plot
    else:
        p = Path(plot)
        if not p.is_file():
            raise InputError(f"plot {str(p)!r} does not exist")
        png = p.read_bytes()
    meta = report.get("meta") or {}
    title = "edgeopt report" + (f": {meta['model']}" if meta.get("model") else "")
    cols, rows = _rows(report)
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join("<tr" + (' class="resumed"' if r[-1] == "earlier run" and TIMED in cols else "") + ">"
                   + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary(report))
    failed = failed_variants(report)
    nav = ['<a href="#variants">variants</a>', '<a href="#plot">plot</a>']
    failed_html = ""
    if failed:
        nav.append(f'<a href="#failed">failed ({len(failed)})</a>')
        items = "".join(
            f"<tr><td>{e(v['name'])}</td><td>{e(v['runtime'])}</td><td>{e(v.get('target') or '-')}</td>"
            f"<td>{e(' -> '.join(format_step(s) for s in v.get('steps') or []) or '-')}</td>"
            f"<td>{e(v['error'])}</td></tr>" for v in failed)
        failed_html = (f'<h2 id="failed">Failed variants</h2><p>Not measured; left out of the table, '
                       f'the plot and the Pareto front.</p><table class="left"><tr><th>variant</th>'
                       f'<th>runtime</th><th>target</th><th>steps</th><th>error</th></tr>{items}</table>')
    nav.append('<a href="#steps">steps</a>')
    beyond_nav, beyond = beyond_html(report, base_dir)
    nav += beyond_nav
    changes = []
    for d in variant_changes(report):
        steps = " -> ".join(d["steps"]) or "no steps (the original model)"
        lis = "".join(f"<li>{e(c)}</li>" for c in d["changes"])
        changes.append(f"<h3>{e(d['name'])}</h3><p>on {e(', '.join(d['runtimes']))}: <code>{e(steps)}</code></p>"
                       + (f"<ul>{lis}</ul>" if lis else ""))
    img = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:110em}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}
table.facts td,table.facts th,table.left td{{text-align:left}}tr.resumed td{{color:#555;font-style:italic}}
nav a{{margin-right:1em}}</style></head>
<body><h1>{e(title)}</h1>
<nav>{' '.join(nav)}</nav>
<table class="facts">{facts}</table>
<h2 id="variants">Variants</h2>
<p>Sorted by median latency; * marks the {e(front_name(report))} Pareto front; &lt;- the fastest
runtime of each variant among its rows that keep the quality limit (-: below it).</p>
<table><tr>{head}</tr>{body}</table>
<h2 id="plot">Trade-off</h2>
<p><img src="data:image/png;base64,{img}" alt="latency against accuracy, one numbered point per variant" style="max-width:100%"></p>
{failed_html}
<h2 id="steps">Steps and what they changed</h2>
{''.join(changes)}
{beyond}
</body></html>
"""


def write_report(report: dict, out_dir: str | os.PathLike, plot: bool = False) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir`` (each atomically); with ``plot``, also
    pareto.png, reliability.png (when variants carry calibration data) and index.html (which
    embeds both plots and the exemplar thumbnails, and needs no other file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown(report))
    if plot:
        png = pareto_png_bytes(report)
        write_bytes_atomic(out / "pareto.png", png)
        reliability = reliability_png_bytes(report)
        if reliability is not None:
            write_bytes_atomic(out / "reliability.png", reliability)
        write_text_atomic(out / "index.html", index_html(report, png, base_dir=out))
    return out / "report.json", out / "report.md"


# -- beyond top-1: classes, slices, calibration, robustness, exemplars ------------------------

def _pts(v) -> str:
    return "-" if v is None else f"{v * 100:+.2f} pt"


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def evaluated_variants(report: dict) -> list[dict]:
    """The ok variants that carry evaluation fields (``per_class``, ``ece``, ``robustness`` or
    ``exemplars``), fastest first."""
    keys = ("per_class", "ece", "robustness", "exemplars")
    return [v for v in sorted_variants(report) if any(v.get(k) is not None for k in keys)]


def _row_label(v: dict) -> str:
    return f"{v['name']}/{v['runtime']}" + (f" ({v['target']})" if v.get("target") not in (None, "cpu") else "")


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
        rows.append([_row_label(v), _pct(v.get("accuracy")),
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
        header = ["class", "n", "fp32 (reference)"] + [_row_label(v) for v in with_classes]
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
                           + [_row_label(v) for v in with_classes], body))
    robust = [v for v in variants if v.get("robustness")]
    if robust:
        perts = []
        for v in robust:
            perts += [p for p in v["robustness"]["perturbations"] if p not in perts]
        body = []
        for v in robust:
            ps = v["robustness"]["perturbations"]
            cells = [_row_label(v), str(v["robustness"]["samples"]), _pct(v["robustness"].get("clean_accuracy"))]
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
        body = [[_row_label(v), str(v["exemplars"]["count"]),
                 ", ".join(f"{k}: {n}" for k, n in sorted(v["exemplars"]["per_class"].items(),
                                                          key=lambda kv: -kv[1])) or "-",
                 v["exemplars"].get("file") or "-"] for v in ex]
        tables.append(("exemplars", "Compression-identified exemplars (inputs where the variant's "
                       "top-1 differs from fp32's)", ["variant", "count", "per class", "file"], body))
    return tables


def reliability_figure(report: dict):
    """Reliability diagrams, one panel per evaluated variant: accuracy against confidence per
    bin (bars), the diagonal of perfect calibration, and the ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in evaluated_variants(report) if v.get("calibration")]
    n = max(len(variants), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, v in zip(axes.flat, variants):
        ax.axis("on")
        cal = v["calibration"]
        width = 1.0 / cal["bins"]
        centers = [(i + 0.5) * width for i in range(cal["bins"])]
        filled = [i for i, n in enumerate(cal["count"]) if n]  # empty bins have nothing to draw
        xs = [centers[i] for i in filled]
        acc = [cal["accuracy"][i] for i in filled]
        conf = [cal["confidence"][i] for i in filled]
        ax.bar(xs, acc, width=width * 0.95, color="tab:blue", alpha=0.75, label="accuracy")
        ax.bar(xs, [abs(c - a) for a, c in zip(acc, conf)], bottom=[min(a, c) for a, c in zip(acc, conf)],
               width=width * 0.95, color="tab:red", alpha=0.3, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{_row_label(v)}\nECE {v['ece']:.4f} (fp32 {v['ece_fp32']:.4f})", fontsize=8)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.tick_params(labelsize=6)
    if variants:
        axes.flat[0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def reliability_png_bytes(report: dict) -> bytes | None:
    """The reliability diagrams as PNG bytes; ``None`` when no variant has calibration data."""
    import matplotlib.pyplot as plt

    if not any(v.get("calibration") for v in evaluated_variants(report)):
        return None
    fig = reliability_figure(report)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(fig)
    return buf.getvalue()


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
        lines += [f"![{_row_label(v)}]({path})" for v, path in sheets]
    return lines


def beyond_html(report: dict, base_dir: str | os.PathLike | None) -> tuple[list[str], str]:
    """The evaluation sections of index.html and their nav links; the reliability diagrams and
    the exemplar thumbnail sheets (read from ``base_dir``, the study folder) are embedded as
    data URIs, so the page still needs no other file."""
    e = html.escape
    tables = beyond_tables(report)
    if not tables:
        return [], ""
    nav, parts = [], []
    for anchor, title, header, rows in tables:
        if anchor == "beyond":
            nav.append('<a href="#beyond">beyond top-1</a>')
        elif anchor in ("classes", "robustness", "exemplars"):
            nav.append(f'<a href="#{anchor}">{anchor}</a>')
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(f'<h2 id="{e(anchor)}">{e(title)}</h2><table><tr>{head}</tr>{body}</table>')
        if anchor == "beyond":
            png = reliability_png_bytes(report)
            if png:
                nav.append('<a href="#calibration">calibration</a>')
                parts.append('<h2 id="calibration">Calibration: reliability diagrams</h2><p><img src="data:image/png;base64,'
                             + base64.b64encode(png).decode("ascii")
                             + '" alt="reliability diagram per variant" style="max-width:100%"></p>')
    if base_dir is not None:
        for v in evaluated_variants(report):
            path = (v.get("exemplars") or {}).get("thumbnails")
            if path and (Path(base_dir) / path).is_file():
                data = base64.b64encode((Path(base_dir) / path).read_bytes()).decode("ascii")
                parts.append(f"<h3>{e(_row_label(v))}: {v['exemplars']['count']} exemplars</h3>"
                             f'<p><img src="data:image/png;base64,{data}" alt="exemplar thumbnails of '
                             f'{e(_row_label(v))}" style="max-width:100%"></p>')
    return nav, "\n".join(parts)
