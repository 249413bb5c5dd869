"""Numbers as the report's phrases say them: what each step's ``describe`` writes about its record.

Every registered step's module has ``describe(metrics, config) -> list[str]`` (the phrases the
report shows for a record of that step, ``edgeopt.pipeline.steps``); they share these so that a
count, a change or a size reads the same whichever step wrote it.

Example:
    >>> from edgeopt.core.phrases import change, count, listing, said, size
    >>> count(1500), change(1000, 500), size(2048), listing(["a", "b", "c"], limit=2)
    ('1.50k', '1.00k -> 500 (-50%)', '2.0 KB', 'a, b, +1 more')
"""

from __future__ import annotations

from typing import Callable


def count(n) -> str:
    """``1500`` -> ``1.50k`` (k, M, G); a non-number as its text."""
    if not isinstance(n, (int, float)):
        return str(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def size(n: int | None) -> str:
    """A byte count: ``2048`` -> ``2.0 KB``; none -> ``-``."""
    if not n:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def change(before, after, fmt=count) -> str:
    """``before -> after (+x%)`` with ``fmt`` for both; ``-`` when either is unknown."""
    if before is None or after is None:
        return "-"
    pct = f" ({(after - before) / before * 100:+.0f}%)" if before else ""
    return f"{fmt(before)} -> {fmt(after)}{pct}"


def listing(items: list[str], limit: int = 8) -> str:
    """The first ``limit`` items joined, and how many more."""
    more = f", +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def said(metrics: dict, *phrases: tuple[str, str | Callable]) -> list[str]:
    """The phrases whose metric is recorded (not None): each ``(key, template)``, the template a
    format string for the value or a function of it (an empty result says nothing).

    >>> said({"opset": 18, "size": None}, ("opset", "opset {}"), ("size", "size {}"))
    ['opset 18']
    """
    out = []
    for key, template in phrases:
        value = metrics.get(key)
        if value is not None:
            text = template.format(value) if isinstance(template, str) else template(value)
            if text:
                out.append(text)
    return out
