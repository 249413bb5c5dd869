"""The report as data: the report.json object, its checks, and the fields derived from its rows.

The views of it live beside this module: ``report_text`` (the terminal table, report.md),
``report_steps`` (what each variant's steps changed), ``report_figures`` (the trade-off plot, the
reliability diagrams) and ``report_html`` (index.html, and ``write_report``, which writes them all).

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
     "latency_ms": {"median", "p90", "min", "n",
                    "rounds", "interval" (optional: the medians of consecutive blocks of runs, and
                                          their p10 and p90: how much the latency moves),
                    "load_1m" (optional: the 1-minute load average when it was timed)},
     "size_bytes", "params", "flops",
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
    >>> from edgeopt.pipeline.report_schema import failed_variants, make_report, pareto_flags
    >>> pareto_flags([(1.0, 0.9), (2.0, 0.95), (3.0, 0.9)])
    [True, True, False]
    >>> ok = {"name": "fp32", "runtime": "onnxruntime", "target": "cpu", "steps": [],
    ...       "latency_ms": {"median": 2.0, "p90": 2.1}, "accuracy": 0.98, "agreement": 1.0}
    >>> bad = {"name": "int8", "runtime": "tvm", "target": "cpu", "status": "failed",
    ...        "error": "TVM build failed", "steps": [{"quantize": {}}]}
    >>> r = make_report([ok, bad], {"threads": 1}, None, None, meta={"created": "2026-01-01"})
    >>> r["reference"], r["variants"][0]["pareto"], "pareto" in r["variants"][1]
    ('fp32/onnxruntime', True, False)
    >>> failed_variants(r)[0]["error"]
    'TVM build failed'
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Sequence

from edgeopt.core.errors import InputError
from edgeopt.runtimes.timing import round_spread

SCHEMA = 1
OK, FAILED = "ok", "failed"
DEFAULT_REFERENCE = "fp32/onnxruntime"


# -- entries ---------------------------------------------------------------------------------

def status(v: dict) -> str:
    """``"ok"`` or ``"failed"``; an entry without ``status`` is ok."""
    s = v.get("status", OK)
    if s not in (OK, FAILED):
        raise InputError(f"variant {name_runtime(v)!r}: status must be 'ok' or 'failed', got {s!r}")
    return s


def ok_variants(report: dict) -> list[dict]:
    return [v for v in report["variants"] if status(v) == OK]


def failed_variants(report: dict) -> list[dict]:
    return [v for v in report["variants"] if status(v) == FAILED]


def name_runtime(v: dict) -> str:
    """A row's ``name/runtime``, the form the reference and the gate name rows by.

    >>> name_runtime({"name": "int8", "runtime": "tvm"})
    'int8/tvm'
    """
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
            raise InputError(f"failed variant {name_runtime(v)!r} has no 'error' reason")
        v["error"] = one_line(v["error"])
        v.setdefault("steps", [])
        return v
    lat = v.get("latency_ms")
    if not isinstance(lat, dict) or not isinstance(lat.get("median"), (int, float)) or lat["median"] <= 0:
        raise InputError(f"variant {name_runtime(v)!r} has no positive latency_ms.median; an entry "
                         "without measurements must say \"status\": \"failed\" and give an 'error'")
    return v


def choose_reference(variants: list[dict], preferred: str = DEFAULT_REFERENCE) -> str | None:
    """The latency reference: ``preferred`` if that variant is ok, else the first ok variant
    (``None`` when every variant failed)."""
    ok = [name_runtime(v) for v in variants if status(v) == OK]
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
    names = [name_runtime(v) for v in ok]
    if reference is None:
        reference = choose_reference(entries)
    elif reference not in names:
        failed = [name_runtime(v) for v in entries if status(v) == FAILED]
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
    ref_row = next((v for v in ok_variants(report) if name_runtime(v) == ref), None)
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



# -- how far to trust a latency -----------------------------------------------------------------

#: A row's latency is too noisy to trust when the p10-p90 band of its round medians is wider
#: than this share of its median. Why 0.5: with 20 rounds (runtimes.timing.ROUNDS) the median's
#: own 90% interval is about +-0.18 x that share (normal approximation: sigma ~ band / 2.56, the
#: median's standard error ~ 1.25 sigma / sqrt(20)), so at 0.5 it is about +-9%, as wide as the
#: CI gate's default 10% latency limit: a difference of that size between such a row and another
#: cannot be read from their medians. A quiet 2-core run of the demo has 1 row of 18 over it
#: (bands of 2-59%); under a co-located load the band reaches many times the median.
SPREAD_LIMIT = 0.5
#: Fewer timed runs than rounds: each round is a single run, and the band is guesswork.
FEW_RUNS = 20


def latency_spread(v: dict) -> tuple[float, float] | None:
    """p10 and p90 over a row's round medians (its ``latency_ms.interval``, or computed from its
    ``rounds``); ``None`` for reports that kept no rounds.

    >>> latency_spread({"latency_ms": {"median": 6.0, "rounds": [float(i) for i in range(1, 12)]}})
    (2.0, 10.0)
    """
    lat = v.get("latency_ms") or {}
    interval = lat.get("interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return float(interval[0]), float(interval[1])
    rounds = lat.get("rounds")
    return tuple(round_spread(rounds)) if rounds else None


def noisy_latency(v: dict, machine: dict | None = None) -> str | None:
    """Why an ok row's latency is too noisy to trust (its band wider than ``SPREAD_LIMIT`` of its
    median) with the likely cause, in one line; ``None`` when it is not, or kept no rounds.
    The causes: the machine was busy (a 1-minute load average above its cores when the row was
    timed), too few runs, or, when neither, what the report cannot see (thermal throttling, a
    frequency change, other work too brief for the load average).

    >>> v = {"latency_ms": {"median": 1.0, "interval": [0.8, 1.6], "n": 100, "load_1m": 3.5}}
    >>> noisy_latency(v, {"cores": 2})
    'p10-p90 0.800-1.600 ms, 80% of the median; likely cause: machine busy (load 3.5 on 2 cores when timed)'
    >>> noisy_latency({"latency_ms": {"median": 1.0, "interval": [0.9, 1.1]}}) is None
    True
    """
    spread = latency_spread(v)
    lat = v.get("latency_ms") or {}
    if spread is None or not lat.get("median"):
        return None
    lo, hi = spread
    share = (hi - lo) / lat["median"]
    if share <= SPREAD_LIMIT:
        return None
    load, n = lat.get("load_1m"), lat.get("n")
    cores = (machine or {}).get("cores")
    causes = []
    if isinstance(load, (int, float)) and cores and load > cores:
        causes.append(f"machine busy (load {load:.1f} on {cores} cores when timed)")
    if isinstance(n, int) and n < FEW_RUNS:
        causes.append(f"too few runs ({n})")
    runs = f", {n} runs" if isinstance(n, int) else ""
    if not causes and not isinstance(load, (int, float)):
        causes.append(f"unknown, load not recorded{runs}")
    elif not causes:  # neither load nor run count: what the report cannot see
        causes.append(f"thermal or frequency changes, or brief other work (load {load:.1f} on "
                      f"{cores or '?'} cores{runs})")
    return (f"p10-p90 {lo:.3f}-{hi:.3f} ms, {share:.0%} of the median; likely cause: " + " and ".join(causes))


def sorted_variants(report: dict) -> list[dict]:
    """The ok variants, fastest first."""
    return sorted(ok_variants(report), key=lambda v: v["latency_ms"]["median"])


def evaluated_variants(report: dict) -> list[dict]:
    """The ok variants that carry evaluation fields (``per_class``, ``ece``, ``robustness`` or
    ``exemplars``), fastest first."""
    keys = ("per_class", "ece", "robustness", "exemplars")
    return [v for v in sorted_variants(report) if any(v.get(k) is not None for k in keys)]


def row_label(v: dict) -> str:
    """A row as the evaluation tables and figures title it: ``name/runtime``, with the target
    when it is not plain ``cpu``.

    >>> row_label({"name": "int8", "runtime": "tvm", "target": "avx512"})
    'int8/tvm (avx512)'
    """
    return f"{v['name']}/{v['runtime']}" + (f" ({v['target']})" if v.get("target") not in (None, "cpu") else "")
