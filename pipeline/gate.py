"""The CI regression gate: compare a report with a baseline report, variant by variant.

Latency is compared as each variant's ratio to the reference variant of its own run (machines
are noisy; ratios travel between them), size in bytes, accuracy in points.

Example:
    >>> from edgeopt.pipeline.gate import Thresholds, compare
    >>> base = {"schema": 1, "variants": [{"name": "int8", "runtime": "onnxruntime", "target": "cpu",
    ...         "latency_ratio": 0.5, "size_bytes": 100, "accuracy": 0.98}]}
    >>> new = {"schema": 1, "variants": [{"name": "int8", "runtime": "onnxruntime", "target": "cpu",
    ...         "latency_ratio": 0.6, "size_bytes": 100, "accuracy": 0.98}]}
    >>> [row["regressions"] for row in compare(new, base, Thresholds())]
    [['latency']]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgeopt.core.errors import InputError

from .report import SCHEMA


@dataclass(frozen=True)
class Thresholds:
    """Largest allowed regressions: latency ratio and size as fractions, accuracy in fraction
    points (0.005 = half a point)."""

    max_latency_regression: float = 0.10
    max_size_regression: float = 0.01
    max_accuracy_drop: float = 0.005

    def __post_init__(self):
        for name in ("max_latency_regression", "max_size_regression", "max_accuracy_drop"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise InputError(f"{name} must be a number >= 0, got {v!r}")


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


def compare(report: dict, baseline: dict, t: Thresholds) -> list[dict]:
    """One row per variant with the changes and the list of regressions (may be empty)."""
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
    rows = []
    for key in old:
        n, o = new[key], old[key]
        row = {"variant": key, "regressions": []}
        row["latency"] = _rel(n.get("latency_ratio"), o.get("latency_ratio"))
        row["size"] = _rel(n.get("size_bytes"), o.get("size_bytes"))
        acc_n, acc_o = n.get("accuracy"), o.get("accuracy")
        row["accuracy_drop"] = (acc_o - acc_n) if acc_n is not None and acc_o is not None else None
        if row["latency"] is not None and row["latency"] > t.max_latency_regression:
            row["regressions"].append("latency")
        if row["size"] is not None and row["size"] > t.max_size_regression:
            row["regressions"].append("size")
        if row["accuracy_drop"] is not None and row["accuracy_drop"] > t.max_accuracy_drop + 1e-12:
            row["regressions"].append("accuracy")
        rows.append(row)
    return rows


def _rel(new, old):
    if new is None or old is None or old == 0:
        return None
    return (new - old) / old


def format_rows(rows: list[dict], t: Thresholds) -> str:
    def pct(v):
        return "-" if v is None else f"{v * 100:+.1f}%"

    def pts(v):
        return "-" if v is None else f"{-v * 100:+.2f} pt"

    head = ("variant", "latency ratio", "size", "accuracy", "verdict")
    table = [head] + [(r["variant"], pct(r["latency"]), pct(r["size"]), pts(r["accuracy_drop"]),
                       "REGRESSION: " + ", ".join(r["regressions"]) if r["regressions"] else "ok")
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"limits: latency ratio +{t.max_latency_regression * 100:.1f}%, size "
                 f"+{t.max_size_regression * 100:.1f}%, accuracy -{t.max_accuracy_drop * 100:.2f} pt")
    return "\n".join(lines)
