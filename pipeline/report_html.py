"""The report's page and files: index.html, which stands alone (plots and thumbnails embedded), and
``write_report``, which writes report.json, report.md and, with a plot, pareto.png,
reliability.png and index.html.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

from edgeopt.core.errors import InputError
from edgeopt.core.files import write_bytes_atomic, write_json_atomic, write_text_atomic

from .report_figures import pareto_png_bytes, reliability_png_bytes
from .report_schema import evaluated_variants, failed_variants, row_label
from .report_steps import format_step, variant_changes
from .report_text import (TIMED, Section, beyond_tables, front_name, markdown, noise_heading, noise_lines, summary,
                          table_rows)


# -- the page ---------------------------------------------------------------------------------

def index_html(report: dict, plot: bytes | str | os.PathLike | None = None,
               base_dir: str | os.PathLike | None = None, sections: Sequence[Section] = ()) -> str:
    """A page that stands alone (no external file or URL): summary, table, the plot embedded as
    a PNG data URI, failed variants, each variant's steps and what they changed, then
    ``sections`` (each with a link in the navigation).

    ``plot``: PNG bytes, or a PNG file to embed; ``None`` renders it (``pareto_png_bytes``).
    ``base_dir``: the study folder, where the exemplar thumbnail sheets named by the entries are
    read from (to embed them too).

    Example:
        >>> from edgeopt.pipeline.report_schema import make_report
        >>> r = make_report([{"name": "fp32", "runtime": "onnxruntime", "latency_ms": {"median": 1.0}}],
        ...                 {"threads": 1}, None, None)
        >>> page = index_html(r, plot=b"png", sections=[Section("Search", "<p>12 trials</p>")])
        >>> '<h2 id="search">Search</h2>' in page, '<a href="#search">search</a>' in page
        (True, True)
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
    cols, rows = table_rows(report)
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
    noisy = noise_lines(report)
    noise_html = (f'<p class="noisy">{e(noise_heading())}</p><ul class="noisy">'
                  + "".join(f"<li>{e(line)}</li>" for line in noisy) + "</ul>") if noisy else ""
    nav += [f'<a href="#{e(s.id)}">{e(s.title.lower())}</a>' for s in sections]
    extra = "\n".join(f'<h2 id="{e(s.id)}">{e(s.title)}</h2>\n{s.html}' for s in sections)
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
{noise_html}
<h2 id="plot">Trade-off</h2>
<p><img src="data:image/png;base64,{img}" alt="latency against accuracy, one numbered point per variant" style="max-width:100%"></p>
{failed_html}
<h2 id="steps">Steps and what they changed</h2>
{''.join(changes)}
{beyond}
{extra}
</body></html>
"""


def write_report(report: dict, out_dir: str | os.PathLike, plot: bool = False,
                 sections: Sequence[Section] = ()) -> tuple[Path, Path]:
    """Write report.json and report.md into ``out_dir`` (each atomically); with ``plot``, also
    pareto.png, reliability.png (when variants carry calibration data) and index.html (which
    embeds both plots and the exemplar thumbnails, and needs no other file). ``sections``
    (``report_text.Section``) are added at the end of report.md and index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown(report, sections))
    if plot:
        png = pareto_png_bytes(report)
        write_bytes_atomic(out / "pareto.png", png)
        reliability = reliability_png_bytes(report)
        if reliability is not None:
            write_bytes_atomic(out / "reliability.png", reliability)
        write_text_atomic(out / "index.html", index_html(report, png, base_dir=out, sections=sections))
    return out / "report.json", out / "report.md"


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
                parts.append(f"<h3>{e(row_label(v))}: {v['exemplars']['count']} exemplars</h3>"
                             f'<p><img src="data:image/png;base64,{data}" alt="exemplar thumbnails of '
                             f'{e(row_label(v))}" style="max-width:100%"></p>')
    return nav, "\n".join(parts)
