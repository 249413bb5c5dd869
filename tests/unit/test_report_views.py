"""The report's views: extra sections (search adds its own), and each latency's spread with a flag
on rows whose spread is too wide to trust."""

from edgeopt.pipeline.report_html import index_html, write_report
from edgeopt.pipeline.report_schema import make_report
from edgeopt.pipeline.report_text import Section, markdown, text_table


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


CALM = [1.0, 1.01, 0.99, 1.02, 0.98] * 4          # p10-p90 about 4% of the median
NOISY = [1.0, 0.7, 1.6, 0.9, 1.4, 1.1, 2.0] * 3   # p10-p90 over 100% of it


def test_a_noisy_row_is_flagged_with_its_likely_cause_in_every_view(tmp_path):
    r = _report(_row("fp32", "onnxruntime", 1.0, rounds=CALM, n=100, load_1m=0.4),
                _row("int8", "tvm", 1.1, rounds=NOISY, n=100, load_1m=3.7),
                machine={"threads": 2, "cores": 2})
    text = text_table(r)
    header = text.splitlines()[0]
    assert "p10-p90 ms" in header
    noisy = [line for line in text.splitlines() if line.startswith("  int8/tvm")]
    assert len(noisy) == 1 and "machine busy (load 3.7 on 2 cores when timed)" in noisy[0]
    assert "fp32/onnxruntime (" not in text, "the calm row is not flagged"
    row = next(line for line in text.splitlines() if line.startswith("int8 "))
    assert " !" in row and " !" not in next(line for line in text.splitlines() if line.startswith("fp32 "))
    md = markdown(r)
    assert "- int8/tvm (cpu): p10-p90" in md and "machine busy" in md and "- fp32/onnxruntime (cpu)" not in md
    page = index_html(r, plot=b"png")
    assert '<ul class="noisy"><li>int8/tvm (cpu): p10-p90' in page and "machine busy" in page


def test_the_cause_is_too_few_runs_or_none_recorded():
    few = _report(_row("fp32", "onnxruntime", 1.0, rounds=NOISY[:8], n=8))
    assert "likely cause: too few runs (8)" in text_table(few)
    unexplained = _report(_row("fp32", "onnxruntime", 1.0, rounds=NOISY, n=100, load_1m=0.5),
                          machine={"threads": 1, "cores": 4})
    assert "likely cause: thermal or frequency changes, or brief other work (load 0.5 on 4 cores, 100 runs)" \
        in text_table(unexplained)
    unknown = _report(_row("fp32", "onnxruntime", 1.0, rounds=NOISY, n=100))
    assert "likely cause: unknown, load not recorded, 100 runs" in text_table(unknown)


def test_calm_rows_and_reports_without_rounds_raise_no_flag():
    calm = _report(_row("fp32", "onnxruntime", 1.0, rounds=CALM, n=100))
    assert "too noisy" not in text_table(calm) and "too noisy" not in markdown(calm)
    assert "noisy" not in index_html(calm, plot=b"png")
    old = _report(_row("fp32", "onnxruntime", 1.0, p90=3.0, min=0.5, n=100))
    assert "p10-p90" not in text_table(old), "a report that kept no rounds shows its p90 as before"
