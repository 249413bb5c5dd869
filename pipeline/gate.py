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

Rows are keyed by name, runtime and target, and a row's target names every build option that
changes the artifact (``znver3/onednn``; ``edgeopt.pipeline.measure.runtime_target``): a report
with two rows of one key is refused, so no row hides another. A baseline of another model, task
or recipe (``meta``) is refused (``InputError``) unless ``force``.

The task's own metric first: for a task scored by something other than top-1 (mse, mae,
cosine, ...), the metric is gated by default (``max_metric_drop`` None): error metrics (lower is
better) may rise by ``DEFAULT_METRIC_RISE`` (5 %) of the baseline's value, other metrics may fall
by ``DEFAULT_METRIC_DROP`` (0.005) in their units.

Statistics (``edgeopt.pipeline.gate_stats``; ``confidence``, ``--confidence``, default 0.90:
intervals are two-sided at that level, so their ends are one-sided bounds at 0.95):

- Latency fails only when the regression exceeds the limit *with confidence*: the interval's
  lower end of the latency change is above the limit. The interval comes from the same-run A/B
  re-timing when ``ab`` holds the row (``edgeopt.pipeline.gate_retime``: the baseline's artifact
  and the candidate's timed in interleaved rounds, the median per-round ratio), else from a
  bootstrap over the rounds both reports keep (each side a ratio to its own run's reference),
  else (reports without rounds) the point change is compared with the limit.
- Accuracy fails when the drop exceeds the limit and McNemar's paired test (mid-p, one-sided)
  says the candidate is worse at the confidence's one-sided level, on the per-sample outcomes
  both reports keep; a task metric with per-sample values likewise with a paired bootstrap (its
  interval must exclude no change). Without per-sample data on both sides, the point change is
  compared with the limit.

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

from . import gate_stats
from .report_schema import FAILED, OK, SCHEMA, status

DEFAULT_AGREEMENT_DROP = 0.005
DEFAULT_METRIC_RISE = 0.05      # error metrics: a 5 % rise of the baseline's value
DEFAULT_METRIC_DROP = 0.005     # other non-top-1 metrics, in their own units

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
    confidence: float = gate_stats.CONFIDENCE

    def __post_init__(self):
        c = self.confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.5 <= c < 1:
            raise InputError(f"confidence must be a number in [0.5, 1), got {c!r}")
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


def row_key(v: dict) -> str:
    """``name/runtime/target``: what a row is (the target names the build options that change
    the artifact)."""
    return f"{v['name']}/{v['runtime']}/{v.get('target') or '-'}"


def keyed_rows(data: dict, what: str) -> dict:
    """``{row_key: entry}``; ``InputError`` when two rows share a key (one would hide the other)."""
    rows = {}
    for v in data["variants"]:
        key = row_key(v)
        if key in rows:
            raise InputError(f"the {what} has two rows keyed {key!r}; expected one row per variant and "
                             "target (a report from an edgeopt that keyed TVM targets by CPU only: re-run it)")
        rows[key] = v
    return rows


def machine_note(report: dict, baseline: dict) -> list[str]:
    """A warning when latency ratios come from two different CPUs (ratios move between them)."""
    a, b = (report.get("machine") or {}).get("cpu"), (baseline.get("machine") or {}).get("cpu")
    if a and b and a != b:
        return [f"warning: the baseline was timed on {b!r}, this report on {a!r}: latency ratios to the "
                "reference move between CPUs (re-time the baseline here: keep its artifacts, --ab)"]
    return []


STUDY_FIELDS = ("model", "task", "recipe")


def check_same_study(report: dict, baseline: dict, force: bool = False) -> list[str]:
    """Refuse (``InputError``) a baseline of another model, task or recipe (``meta``), unless
    ``force``; return notes for what cannot be checked or was forced."""
    notes = []
    new, old = report.get("meta") or {}, baseline.get("meta") or {}
    differ = []
    for field in STUDY_FIELDS:
        a, b = new.get(field), old.get(field)
        if field == "recipe" and a and b:
            a, b = Path(a).name, Path(b).name  # the same recipe file from another checkout path
        if a is not None and b is not None and a != b:
            differ.append(f"{field} {b!r} in the baseline, {a!r} in the report")
    if differ:
        text = "the baseline is of another study: " + "; ".join(differ)
        if not force:
            raise InputError(text + "; expected a baseline of the same model and recipe "
                             "(refresh it, or pass --force to compare anyway)")
        notes.append(f"note: {text} (compared anyway: --force)")
    missing = [f for f in ("model",) if old.get(f) is None or new.get(f) is None]
    if missing and not differ:
        notes.append("note: the report or the baseline names no model (meta.model); "
                     "cannot check they are of the same study")
    return notes


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
    """A variant's value of the task metric: ``metric_value`` (or ``task_metric.value``), else
    accuracy for top-1 metrics, agreement for ``agreement``."""
    if v.get("metric_value") is not None:
        return v["metric_value"]
    named = v.get("task_metric") or {}
    if named.get("value") is not None and (metric is None or named.get("name") == metric):
        return named["value"]
    if metric in _ACCURACY_METRICS:
        return v.get("accuracy")
    if metric == "agreement":
        return v.get("agreement")
    return None


def limits(report: dict, baseline: dict, t: Thresholds) -> dict:
    """The limits in force for this pair of reports: ``t`` with the agreement default resolved
    (``agreement_gated_because`` says why) and the metric's name and direction."""
    # Labels: a top-1 accuracy, or a labelled metric's value (a regression task has no accuracy,
    # and its agreement is a similarity to fp32's outputs, not the quality to gate).
    labelled = any(v.get("accuracy") is not None or v.get("metric_value") is not None
                   for data in (report, baseline) for v in data["variants"] if status(v) == OK) or any(
        (data.get("task") or {}).get("labelled") for data in (report, baseline))
    agreement, why = t.max_agreement_drop, "set"
    if agreement is None:
        agreement, why = (None, "labels present") if labelled else (DEFAULT_AGREEMENT_DROP, "no labels")
    metric, higher = _metric(report, baseline)
    metric_limit, relative = t.max_metric_drop, False
    if metric_limit is None and metric not in (None, "agreement", *_ACCURACY_METRICS) and higher is not None:
        # The task's own metric is what its rows are judged by: gated by default.
        metric_limit, relative = (DEFAULT_METRIC_DROP, False) if higher else (DEFAULT_METRIC_RISE, True)
    if t.max_metric_drop is not None:
        if metric is None:
            raise InputError("max_metric_drop is set but the report names no task metric (task.metric)")
        if higher is None:
            raise InputError(f"cannot gate metric {metric!r}: unknown whether higher is better; known: "
                             f"{sorted(METRIC_HIGHER_IS_BETTER)} (or set task.higher_is_better)")
    return {"latency": t.max_latency_regression, "size": t.max_size_regression,
            "accuracy": t.max_accuracy_drop, "agreement": agreement, "agreement_why": why,
            "metric": metric_limit, "metric_relative": relative, "metric_name": metric,
            "higher_is_better": higher, "class": t.max_class_drop, "ece": t.max_ece_increase,
            "robust": t.max_robust_drop, "confidence": t.confidence}


def compare(report: dict, baseline: dict, t: Thresholds, ab: dict | None = None,
            force: bool = False) -> list[dict]:
    """One row per variant: the changes, ``status`` ("ok", "failed", "failed in both",
    "recovered"), ``error`` (failed variants) and the list of regressions (may be empty);
    ``row["limits"]`` is ``limits(report, baseline, t)``; ``row["notes"]`` what the comparison
    could not check or did another way. ``latency`` is the change of the latency ratio with
    ``latency_interval`` and ``latency_method``; ``accuracy_drop`` comes with
    ``accuracy_interval`` and ``accuracy_p`` when both sides kept per-sample outcomes.

    ``ab``: ``{row_key: RatioInterval}`` from the same-run A/B re-timing (``gate_retime``).
    ``force``: compare with a baseline of another study (see ``check_same_study``)."""
    for what, data in (("report", report), ("baseline", baseline)):
        if data.get("schema") != SCHEMA:
            raise InputError(f"{what} has schema {data.get('schema')!r}; expected {SCHEMA}")
    notes = check_same_study(report, baseline, force)
    new, old = keyed_rows(report, "report"), keyed_rows(baseline, "baseline")
    only_new, only_old = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if only_new or only_old:
        raise InputError("report and baseline list different variants"
                         + (f"; only in the report: {only_new}" if only_new else "")
                         + (f"; only in the baseline: {only_old}" if only_old else "")
                         + " (refresh the baseline when variants change)")
    lim = limits(report, baseline, t)
    alpha = (1 - t.confidence) / 2  # the one-sided level of the interval's ends
    refs = (reference_rows(report, new), reference_rows(baseline, old))
    ab = ab or {}
    rows = []
    for key in old:
        n, o = new[key], old[key]
        row = {"variant": key, "status": OK, "error": None, "regressions": [], "latency": None,
               "latency_interval": None, "latency_method": None,
               "size": None, "accuracy_drop": None, "accuracy_interval": None, "accuracy_p": None,
               "agreement_drop": None, "metric_drop": None, "metric_change": None,
               "metric_interval": None, "class_drop": None, "worst_class": None, "ece_increase": None,
               "robust_drop": None, "limits": lim, "notes": notes}
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
        _judge_latency(row, n, o, refs, ab.get(key), lim, t.confidence)
        row["size"] = _rel(n.get("size_bytes"), o.get("size_bytes"))
        if row["size"] is not None and row["size"] > lim["size"]:
            row["regressions"].append("size")
        row["accuracy_drop"] = _drop(n.get("accuracy"), o.get("accuracy"))
        paired = _paired_accuracy(n, o, t.confidence)
        if paired is not None and row["accuracy_drop"] is not None:
            row["accuracy_drop"], row["accuracy_p"] = paired.drop, paired.p_worse
            row["accuracy_interval"] = (paired.low, paired.high)
        row["agreement_drop"] = _drop(n.get("agreement"), o.get("agreement"))
        _judge_metric(row, n, o, lim, t.confidence)
        row["class_drop"], row["worst_class"] = class_drop(n, o)
        if n.get("ece") is not None and o.get("ece") is not None:
            row["ece_increase"] = n["ece"] - o["ece"]
        row["robust_drop"] = robust_drop(n, o)
        drop = row["accuracy_drop"]
        if lim["accuracy"] is not None and drop is not None and drop > lim["accuracy"] + 1e-12:
            # Beyond the limit, and (with per-sample outcomes) not a chance difference.
            if row["accuracy_p"] is None or row["accuracy_p"] < alpha:
                row["regressions"].append("accuracy")
        drop = row["agreement_drop"]
        if lim["agreement"] is not None and drop is not None and drop > lim["agreement"] + 1e-12:
            row["regressions"].append("agreement")
        for what, key in (("class", "class_drop"), ("ece", "ece_increase"), ("robust", "robust_drop")):
            if lim[what] is not None and row[key] is not None and row[key] > lim[what] + 1e-12:
                row["regressions"].append(what)
    return rows


def reference_rows(data: dict, rows: dict) -> dict:
    """``{target key: the reference entry measured with it}``: ``report["reference"]``
    (``name/runtime``) is one variant; a row's latency ratio divides by it."""
    ref = data.get("reference")
    if not ref:
        return {}
    return {v.get("target") or "-": v for v in rows.values()
            if f"{v['name']}/{v['runtime']}" == ref and status(v) == OK}


def _rounds(v: dict | None):
    r = ((v or {}).get("latency_ms") or {}).get("rounds")
    return r if r else None


def _judge_latency(row: dict, n: dict, o: dict, refs: tuple, ab, lim: dict, confidence: float) -> None:
    """Latency change, its interval and method; a regression only when the interval's lower end
    is above the limit."""
    point = _rel(n.get("latency_ratio"), o.get("latency_ratio"))
    interval, is_ref = None, False
    if ab is not None:
        interval = ab
    else:
        # The reference is the one whose median every ratio in this report divides by; with
        # only one reference (reports have one), it is the entry named by report["reference"].
        ref_new = next(iter(refs[0].values()), None)
        ref_old = next(iter(refs[1].values()), None)
        is_ref = ref_new is n
        if _rounds(n) and _rounds(o) and not is_ref:
            if _rounds(ref_new) and _rounds(ref_old):
                interval = gate_stats.ratio_of_ratios(_rounds(n), _rounds(ref_new), _rounds(o), _rounds(ref_old),
                                                      confidence)
    if interval is not None:
        row["latency"] = interval.ratio - 1
        row["latency_interval"] = (interval.low - 1, interval.high - 1)
        row["latency_method"] = interval.method
        if interval.low - 1 > lim["latency"]:
            row["regressions"].append("latency")
        return
    row["latency"] = point
    if point is not None and not is_ref:
        row["latency_method"] = "point change (a report keeps no rounds)"
    if point is not None and point > lim["latency"]:
        row["regressions"].append("latency")


def _paired_accuracy(n: dict, o: dict, confidence: float):
    """McNemar on the per-sample outcomes of both rows; None when either lacks them."""
    if not (n.get("outcomes") and o.get("outcomes")) or n.get("samples") != o.get("samples"):
        return None
    count = int(o["samples"])
    return gate_stats.mcnemar(gate_stats.unpack_outcomes(o["outcomes"], count),
                              gate_stats.unpack_outcomes(n["outcomes"], count), confidence)


def _judge_metric(row: dict, n: dict, o: dict, lim: dict, confidence: float) -> None:
    """The task metric's change (new - old), how much worse, its paired interval; a regression
    beyond the limit (relative to the baseline's value for error metrics by default) that the
    paired interval does not explain as chance."""
    name, higher = lim["metric_name"], lim["higher_is_better"]
    mn, mo = metric_value(n, name), metric_value(o, name)
    if mn is None or mo is None:
        return
    row["metric_change"] = mn - mo
    if higher is None:
        return
    worse = (mo - mn) if higher else (mn - mo)
    row["metric_drop"] = worse
    limit = lim["metric"]
    if limit is None:
        return
    if lim.get("metric_relative"):
        limit = limit * abs(mo)
    beyond = worse > limit + 1e-12
    a, b = n.get("sample_values"), o.get("sample_values")
    if a and b and n.get("samples") == o.get("samples"):
        c = gate_stats.paired_bootstrap(gate_stats.unpack_values(b), gate_stats.unpack_values(a), confidence)
        row["metric_interval"] = (c.low, c.high)
        chance = c.low <= 0 <= c.high
        beyond = beyond and not chance
    if beyond:
        row["regressions"].append("metric")


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

    def pct(v, interval=None):
        if v is None:
            return "-"
        return f"{v * 100:+.1f}%" + ("" if interval is None else
                                     f" [{interval[0] * 100:+.1f}, {interval[1] * 100:+.1f}]")

    def pts(v, interval=None):  # a drop shown as the change (negative: worse)
        if v is None:
            return "-"
        return f"{0.0 - v * 100:+.2f} pt" + ("" if interval is None else
                                            f" [{0.0 - interval[1] * 100:+.2f}, {0.0 - interval[0] * 100:+.2f}]")

    def change(v, interval=None):
        if v is None:
            return "-"
        return f"{v:+.4g}" + ("" if interval is None else f" [{interval[0]:+.3g}, {interval[1]:+.3g}]")

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
        cells = [r["variant"], pct(r["latency"], r.get("latency_interval")), pct(r["size"]),
                 pts(r["accuracy_drop"], r.get("accuracy_interval")), pts(r.get("agreement_drop"))]
        cells += [change(r.get("metric_change"), r.get("metric_interval"))] if show_metric else []
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
        metric = (f"{worse}{lim['metric'] * 100:g}% of the baseline's" if lim.get("metric_relative")
                  else f"{worse}{lim['metric']:g}")
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
    lines += decision_lines(rows, lim)
    return "\n".join(lines)


def decision_lines(rows: list[dict], lim: dict) -> list[str]:
    """How each decision was made: the tests, the confidence, what fell back to points."""
    conf = lim.get("confidence", gate_stats.CONFIDENCE)
    out = [f"intervals: [low, high] at {conf:.0%} (two-sided); latency fails when the low end is over its "
           f"limit, accuracy when the drop is over its limit and McNemar's mid-p (one-sided) is under "
           f"{(1 - conf) / 2:g}, a metric when its paired bootstrap interval excludes no change"]
    methods = sorted({r["latency_method"] for r in rows if r.get("latency_method")})
    if methods:
        out.append("latency: " + "; ".join(methods))
    if any(r.get("accuracy_drop") is not None and r.get("accuracy_p") is None for r in rows):
        out.append("accuracy: point change (a report keeps no per-sample outcomes)")
    seen = set()
    for r in rows:
        for note in r.get("notes") or ():
            if note not in seen:
                seen.add(note)
                out.append(note)
    return out
