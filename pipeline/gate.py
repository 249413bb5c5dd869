"""The CI regression gate: compare a report with a baseline report, variant by variant.

Latency is compared as each variant's ratio to the reference variant of its own run (machines
are noisy; ratios travel between them), size in bytes, accuracy and agreement in points, the
task's metric in its own units.

Thresholds (the fields of ``Thresholds``; the ``edgeopt check`` flag for each in brackets):

- ``max_latency_regression`` (``--max-latency-regression``, default 0.10): largest allowed rise
  of a variant's latency ratio, as a fraction (0.10 = 10 % slower relative to the reference).
- ``max_size_regression`` (``--max-size-regression``, default 0.01): largest allowed rise of the
  artifact size in bytes, as a fraction.
- ``max_accuracy_drop`` (``--max-accuracy-drop``, default 0.005): largest allowed fall of top-1
  accuracy, in fraction points (0.005 = half a point).
- ``max_agreement_drop`` (``--max-agreement-drop``, default ``None``): largest allowed fall of
  top-1 agreement with the fp32 model, in fraction points. ``None`` gates agreement only when
  there are no labels (no variant of the report or the baseline has an accuracy): agreement is
  then the only quality signal, and it is gated at ``DEFAULT_AGREEMENT_DROP`` (0.005, the same
  half point as accuracy). With labels and ``None``, agreement is shown, not gated.
- ``max_metric_drop`` (``--max-metric-drop``, default ``None`` = not gated): largest allowed
  change of the task's metric (``report["task"]["metric"]``) in its worse direction, in the
  metric's own units (0.005 for top1 is half a point; 0.01 for mse lets mse rise by 0.01). A
  variant's value is its ``metric_value``, or its ``accuracy`` when the metric is top-1 accuracy,
  or its ``agreement`` when the metric is agreement. Whether higher is better comes from
  ``task["higher_is_better"]`` when the report says, else from ``METRIC_HIGHER_IS_BETTER``; an
  unknown metric cannot be gated (``InputError``).

Beyond the mean (the fields ``edgeopt.pipeline.evaluate`` adds; all default ``None`` = not
gated, and a variant without the field on either side is not gated on it):

- ``max_class_drop`` (``--max-class-drop``): largest allowed fall of any one class's accuracy
  (``per_class``), in fraction points: a variant whose mean accuracy held but that lost one
  class is caught here.
- ``max_ece_increase`` (``--max-ece-increase``): largest allowed rise of the expected
  calibration error (``ece``), in its own units (0.01 = one point of ECE).
- ``max_robust_drop`` (``--max-robust-drop``): largest allowed fall of accuracy under any one
  perturbation (``robustness.perturbations``), in fraction points.

Failed variants (``"status": "failed"``): failed in the report but ok in the baseline is a
regression (``"failed"``); failed in both is listed with its reason and is not a regression; ok
in the report but failed in the baseline is listed ("recovered") with nothing to compare.

Example:
    >>> from edgeopt.pipeline.gate import Thresholds, compare
    >>> base = {"schema": 1, "variants": [{"name": "int8", "runtime": "onnxruntime", "target": "cpu",
    ...         "latency_ratio": 0.5, "size_bytes": 100, "accuracy": 0.98}]}
    >>> new = {"schema": 1, "variants": [{"name": "int8", "runtime": "onnxruntime", "target": "cpu",
    ...         "latency_ratio": 0.6, "size_bytes": 100, "accuracy": 0.98}]}
    >>> [row["regressions"] for row in compare(new, base, Thresholds())]
    [['latency']]
    >>> unlabelled = {"schema": 1, "variants": [{"name": "int8", "runtime": "onnxruntime",
    ...               "target": "cpu", "latency_ratio": 0.5, "size_bytes": 100, "agreement": 0.97}]}
    >>> base["variants"][0].update(accuracy=None, agreement=0.99)
    >>> [row["regressions"] for row in compare(unlabelled, base, Thresholds())]
    [['agreement']]
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgeopt.core.errors import InputError

from .report import FAILED, OK, SCHEMA, status

DEFAULT_AGREEMENT_DROP = 0.005

# Whether a larger value of a task metric is better (a task may override with higher_is_better).
METRIC_HIGHER_IS_BETTER = {
    "top1": True, "top5": True, "accuracy": True, "agreement": True, "f1": True, "map": True,
    "miou": True, "auc": True, "psnr": True, "ssim": True, "bleu": True,
    "mse": False, "rmse": False, "mae": False, "loss": False, "nll": False, "perplexity": False,
    "wer": False, "cer": False,
}
_ACCURACY_METRICS = ("top1", "accuracy")


@dataclass(frozen=True)
class Thresholds:
    """Largest allowed regressions (see the module docstring for each field and its flag)."""

    max_latency_regression: float = 0.10
    max_size_regression: float = 0.01
    max_accuracy_drop: float = 0.005
    max_agreement_drop: float | None = None
    max_metric_drop: float | None = None
    max_class_drop: float | None = None
    max_ece_increase: float | None = None
    max_robust_drop: float | None = None

    def __post_init__(self):
        optional = ("max_agreement_drop", "max_metric_drop", "max_class_drop", "max_ece_increase",
                    "max_robust_drop")
        for name in ("max_latency_regression", "max_size_regression", "max_accuracy_drop", *optional):
            v = getattr(self, name)
            if v is None and name in optional:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")


def load_report(path: str | os.PathLike, what: str = "report") -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {str(p)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{what} {str(p)!r} has schema {got!r}; expected {SCHEMA}")
    if not isinstance(data.get("variants"), list):
        raise InputError(f"{what} {str(p)!r} has no 'variants' list")
    return data


def _key(v: dict) -> str:
    return f"{v['name']}/{v['runtime']}/{v.get('target') or '-'}"


def _metric(report: dict, baseline: dict) -> tuple[str | None, bool | None]:
    """The task metric both sides are scored on, and whether higher is better (None: unknown)."""
    names = {}
    for what, data in (("report", report), ("baseline", baseline)):
        task = data.get("task") or {}
        if task.get("metric"):
            names[what] = task["metric"]
    if len(set(names.values())) > 1:
        raise InputError(f"the report is scored on {names['report']!r}, the baseline on "
                         f"{names['baseline']!r}; refresh the baseline when the task changes")
    name = next(iter(names.values()), None)
    for data in (report, baseline):
        hib = (data.get("task") or {}).get("higher_is_better")
        if hib is not None:
            return name, bool(hib)
    return name, METRIC_HIGHER_IS_BETTER.get(str(name).lower()) if name else None


def metric_value(v: dict, metric: str | None) -> float | None:
    """A variant's value of the task metric: ``metric_value``, else accuracy for top-1 metrics,
    agreement for ``agreement``."""
    if v.get("metric_value") is not None:
        return v["metric_value"]
    if metric in _ACCURACY_METRICS:
        return v.get("accuracy")
    if metric == "agreement":
        return v.get("agreement")
    return None


def limits(report: dict, baseline: dict, t: Thresholds) -> dict:
    """The limits in force for this pair of reports: ``t`` with the agreement default resolved
    (``agreement_gated_because`` says why) and the metric's name and direction."""
    labelled = any(v.get("accuracy") is not None for data in (report, baseline)
                   for v in data["variants"] if status(v) == OK)
    agreement, why = t.max_agreement_drop, "set"
    if agreement is None:
        agreement, why = (None, "labels present") if labelled else (DEFAULT_AGREEMENT_DROP, "no labels")
    metric, higher = _metric(report, baseline)
    if t.max_metric_drop is not None:
        if metric is None:
            raise InputError("max_metric_drop is set but the report names no task metric (task.metric)")
        if higher is None:
            raise InputError(f"cannot gate metric {metric!r}: unknown whether higher is better; known: "
                             f"{sorted(METRIC_HIGHER_IS_BETTER)} (or set task.higher_is_better)")
    return {"latency": t.max_latency_regression, "size": t.max_size_regression,
            "accuracy": t.max_accuracy_drop, "agreement": agreement, "agreement_why": why,
            "metric": t.max_metric_drop, "metric_name": metric, "higher_is_better": higher,
            "class": t.max_class_drop, "ece": t.max_ece_increase, "robust": t.max_robust_drop}


def compare(report: dict, baseline: dict, t: Thresholds) -> list[dict]:
    """One row per variant: the changes, ``status`` ("ok", "failed", "failed in both",
    "recovered"), ``error`` (failed variants) and the list of regressions (may be empty);
    ``row["limits"]`` is ``limits(report, baseline, t)``."""
    for what, data in (("report", report), ("baseline", baseline)):
        if data.get("schema") != SCHEMA:
            raise InputError(f"{what} has schema {data.get('schema')!r}; expected {SCHEMA}")
    new = {_key(v): v for v in report["variants"]}
    old = {_key(v): v for v in baseline["variants"]}
    only_new, only_old = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if only_new or only_old:
        raise InputError("report and baseline list different variants"
                         + (f"; only in the report: {only_new}" if only_new else "")
                         + (f"; only in the baseline: {only_old}" if only_old else "")
                         + " (refresh the baseline when variants change)")
    lim = limits(report, baseline, t)
    rows = []
    for key in old:
        n, o = new[key], old[key]
        row = {"variant": key, "status": OK, "error": None, "regressions": [], "latency": None,
               "size": None, "accuracy_drop": None, "agreement_drop": None, "metric_drop": None,
               "metric_change": None, "class_drop": None, "worst_class": None, "ece_increase": None,
               "robust_drop": None, "limits": lim}
        rows.append(row)
        sn, so = status(n), status(o)
        if sn == FAILED:
            row["error"] = n.get("error")
            if so == FAILED:
                row["status"] = "failed in both"
            else:
                row["status"] = FAILED
                row["regressions"].append("failed")
            continue
        if so == FAILED:
            row["status"] = "recovered"
            continue
        row["latency"] = _rel(n.get("latency_ratio"), o.get("latency_ratio"))
        row["size"] = _rel(n.get("size_bytes"), o.get("size_bytes"))
        row["accuracy_drop"] = _drop(n.get("accuracy"), o.get("accuracy"))
        row["agreement_drop"] = _drop(n.get("agreement"), o.get("agreement"))
        mn, mo = metric_value(n, lim["metric_name"]), metric_value(o, lim["metric_name"])
        if mn is not None and mo is not None:
            row["metric_change"] = mn - mo
            if lim["higher_is_better"] is not None:
                row["metric_drop"] = (mo - mn) if lim["higher_is_better"] else (mn - mo)
        if row["latency"] is not None and row["latency"] > lim["latency"]:
            row["regressions"].append("latency")
        if row["size"] is not None and row["size"] > lim["size"]:
            row["regressions"].append("size")
        row["class_drop"], row["worst_class"] = class_drop(n, o)
        if n.get("ece") is not None and o.get("ece") is not None:
            row["ece_increase"] = n["ece"] - o["ece"]
        row["robust_drop"] = robust_drop(n, o)
        for what in ("accuracy", "agreement", "metric"):
            drop = row[f"{what}_drop"]
            if lim[what] is not None and drop is not None and drop > lim[what] + 1e-12:
                row["regressions"].append(what)
        for what, key in (("class", "class_drop"), ("ece", "ece_increase"), ("robust", "robust_drop")):
            if lim[what] is not None and row[key] is not None and row[key] > lim[what] + 1e-12:
                row["regressions"].append(what)
    return rows


def class_drop(new: dict, old: dict) -> tuple[float | None, str | None]:
    """The largest fall of one class's accuracy from ``old`` to ``new`` (``per_class``), and that
    class's name; ``(None, None)`` when either side has no per-class accuracy."""
    a = {r["class"]: r for r in new.get("per_class") or []}
    b = {r["class"]: r for r in old.get("per_class") or []}
    common = sorted(set(a) & set(b))
    if not common:
        return None, None
    c = max(common, key=lambda c: b[c]["accuracy"] - a[c]["accuracy"])
    return b[c]["accuracy"] - a[c]["accuracy"], str(a[c].get("name", c))


def robust_drop(new: dict, old: dict) -> float | None:
    """The largest fall of accuracy under one perturbation from ``old`` to ``new``."""
    a = ((new.get("robustness") or {}).get("perturbations")) or {}
    b = ((old.get("robustness") or {}).get("perturbations")) or {}
    drops = [b[k]["accuracy"] - a[k]["accuracy"] for k in set(a) & set(b)
             if a[k].get("accuracy") is not None and b[k].get("accuracy") is not None]
    return max(drops) if drops else None


def _rel(new, old):
    if new is None or old is None or old == 0:
        return None
    return (new - old) / old


def _drop(new, old):
    return (old - new) if new is not None and old is not None else None


def _verdict(r: dict) -> str:
    if r["status"] == "failed in both":
        return f"failed in both (not a regression): {r['error']}"
    if r["status"] == "recovered":
        return "ok (failed in the baseline; nothing to compare)"
    if r["regressions"]:
        what = ", ".join(r["regressions"])
        return f"REGRESSION: {what}" + (f": {r['error']}" if r["status"] == FAILED else "")
    return "ok"


def format_rows(rows: list[dict], t: Thresholds) -> str:
    """The gate's table and the limits it applied."""
    lim = rows[0]["limits"] if rows and "limits" in rows[0] else {
        "latency": t.max_latency_regression, "size": t.max_size_regression, "accuracy": t.max_accuracy_drop,
        "agreement": t.max_agreement_drop, "agreement_why": "set", "metric": t.max_metric_drop,
        "metric_name": None, "higher_is_better": None}

    def pct(v):
        return "-" if v is None else f"{v * 100:+.1f}%"

    def pts(v):
        return "-" if v is None else f"{(0.0 - v) * 100:+.2f} pt"

    def change(v):
        return "-" if v is None else f"{v:+.4g}"

    name = lim.get("metric_name")
    show_metric = lim.get("metric") is not None or (
        name not in (None, *_ACCURACY_METRICS) and any(r.get("metric_change") is not None for r in rows))
    head = ["variant", "latency ratio", "size", "accuracy", "agreement"]
    head += [str(name)] if show_metric else []
    # The evaluation columns show when gated or when the reports carry the field.
    extra = [(what, col) for what, col, key in (("class", "worst class", "class_drop"), ("ece", "ECE", "ece_increase"),
                                                 ("robust", "robustness", "robust_drop"))
             if lim.get(what) is not None or any(r.get(key) is not None for r in rows)]
    head += [col for _, col in extra]
    table = [head + ["verdict"]]
    for r in rows:
        cells = [r["variant"], pct(r["latency"]), pct(r["size"]), pts(r["accuracy_drop"]),
                 pts(r.get("agreement_drop"))]
        cells += [change(r.get("metric_change"))] if show_metric else []
        for what, _ in extra:
            if what == "class":
                cells.append("-" if r.get("class_drop") is None else f"{pts(r['class_drop'])} ({r['worst_class']})")
            elif what == "ece":
                cells.append(change(r.get("ece_increase")))
            else:
                cells.append(pts(r.get("robust_drop")))
        table.append(cells + [_verdict(r)])
    widths = [max(len(row[i]) for row in table) for i in range(len(head) + 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    agreement = ("not gated (labels present)" if lim["agreement"] is None
                 else f"-{lim['agreement'] * 100:.2f} pt" + (" (no labels)" if lim["agreement_why"] == "no labels" else ""))
    if lim.get("metric") is None:
        metric = "not gated"
    else:
        worse = "-" if lim["higher_is_better"] else "+"
        metric = f"{worse}{lim['metric']:g}"
    lines.append(f"limits: latency ratio +{lim['latency'] * 100:.1f}%, size +{lim['size'] * 100:.1f}%, "
                 f"accuracy -{lim['accuracy'] * 100:.2f} pt, agreement {agreement}, "
                 f"metric{f' {name}' if name else ''} {metric}"
                 + "".join(f", {label} {'not gated' if lim.get(what) is None else fmt(lim[what])}"
                           for what, label, fmt in (
                               ("class", "class", lambda x: f"-{x * 100:.2f} pt"),
                               ("ece", "ECE", lambda x: f"+{x:g}"),
                               ("robust", "robustness", lambda x: f"-{x * 100:.2f} pt"))
                           if lim.get(what) is not None or any(r.get(f"{what}_drop" if what != "ece" else "ece_increase")
                                                               is not None for r in rows)))
    return "\n".join(lines)
