"""The report's views: extra sections (search adds its own), and each latency's spread with a flag
on rows whose spread is too wide to trust."""

from edgeopt.pipeline.report_html import index_html, write_report
from edgeopt.pipeline.report_schema import make_report
from edgeopt.pipeline.report_text import Section, markdown


def _row(name, runtime, median, **latency):
    return {"name": name, "runtime": runtime, "target": "cpu", "steps": [],
            "latency_ms": {"median": median, **latency}, "accuracy": 0.9, "agreement": 1.0}


def _report(*rows, machine=None):
    return make_report(list(rows), machine or {"threads": 1}, None, None, meta={"created": "2026-01-01"})


def test_sections_come_after_the_report_in_markdown_and_html_with_a_nav_link(tmp_path):
    r = _report(_row("fp32", "onnxruntime", 1.0))
    s = Section("Search", "<p>12 <b>trials</b></p>", markdown="12 trials", anchor="search")
    md = markdown(r, [s])
    assert md.rstrip().endswith("## Search\n\n12 trials")
    page = index_html(r, plot=b"png", sections=[s, Section("Notes", "<p>only html</p>")])
    assert '<a href="#search">search</a>' in page and '<a href="#notes">notes</a>' in page
    assert page.index('<h2 id="steps">') < page.index('<h2 id="search">Search</h2>\n<p>12 <b>trials</b></p>') \
        < page.index('<h2 id="notes">') < page.index("</body>")
    write_report(r, tmp_path, plot=False, sections=[s, Section("Notes", "<p>only html</p>")])
    written = (tmp_path / "report.md").read_text()
    assert "## Search" in written and "## Notes" not in written, "a section without markdown stays out of report.md"


def test_no_sections_no_trace():
    r = _report(_row("fp32", "onnxruntime", 1.0))
    assert markdown(r) == markdown(r, ())
    assert index_html(r, plot=b"png") == index_html(r, plot=b"png", sections=())
